"""Reference modulated deformable convolution, written with plain tensor ops.

Gradients come from autograd. Because the value is a sum of bilinear weights times corner values,
with corners outside the image contributing zero (and ``floor`` having zero derivative), autograd
yields torchvision's conventions by itself: one-sided offset gradients on integer coordinates (the
floor cell) and a non-zero offset gradient exactly on the -1 border. Run it in float64 for an oracle of
finite values: with an infinity in the input or the output's gradient it differs from torchvision (and
the op) where a corner of weight 0 meets it, e.g. a sample exactly on the -1 border next to an infinite
first row, which is NaN here and 0 there.
Memory is O(N * C_in * kh * kw * H_out * W_out): meant for tests, not for speed.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn.modules.utils import _pair

# A kernel size, stride, padding or dilation: one int for both dimensions, or (h, w).
IntPair = Union[int, Sequence[int]]


def _bilinear_gather(image: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Bilinear samples of image (N, G, Cg, H, W) at y, x (N, G, P); zero outside, and zero at a NaN or
    infinite position, which samples as if far outside. -> (N, G, Cg, P)."""
    n, groups, cg, height, width = image.shape
    if height * width == 0:  # nothing to gather from: every corner is outside
        return image.new_zeros(n, groups, cg, y.shape[-1])
    flat = image.reshape(n, groups, cg, height * width)
    # (-2, -2) has all four corners outside; where() passes no gradient to the position it replaces.
    finite = torch.isfinite(y) & torch.isfinite(x)
    y = torch.where(finite, y, torch.full_like(y, -2))
    x = torch.where(finite, x, torch.full_like(x, -2))
    y0 = torch.floor(y)
    x0 = torch.floor(x)
    ly, lx = y - y0, x - x0
    y0, x0 = y0.long(), x0.long()
    out = image.new_zeros(n, groups, cg, y.shape[-1])
    for dy, wy in ((0, 1 - ly), (1, ly)):
        for dx, wx in ((0, 1 - lx), (1, lx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            index = torch.where(inside, yy * width + xx, torch.zeros_like(yy))
            values = torch.gather(flat, 3, index.unsqueeze(2).expand(n, groups, cg, -1))
            out = out + values * (wy * wx * inside).unsqueeze(2)
    return out


def sampled_columns(
    input: Tensor,
    offset: Tensor,
    kernel_size: IntPair,
    groups: int = 1,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """The modulated bilinear samples that the convolution multiplies by the weight.

    input (N, C_in, H, W), offset (N, 2*G*kh*kw, H_out, W_out), mask (N, G*kh*kw, H_out, W_out) or
    None -> columns (N, groups, C_in/groups * kh*kw, H_out*W_out), ordered (channel, kernel point).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation)
    n, c_in, height, width = input.shape
    points = kh * kw
    offset_groups = offset.shape[1] // (2 * points)
    out_h, out_w = output_size((height, width), (kh, kw), stride, padding, dilation)

    dev, dt = input.device, input.dtype
    oy = torch.arange(out_h, device=dev, dtype=dt) * sh - ph
    ox = torch.arange(out_w, device=dev, dtype=dt) * sw - pw
    ky = torch.arange(kh, device=dev, dtype=dt) * dh
    kx = torch.arange(kw, device=dev, dtype=dt) * dw
    # Integer tap positions (kh, kw, H_out, W_out), flattened to (K, L).
    base_y = (ky.view(kh, 1, 1, 1) + oy.view(1, 1, out_h, 1)).expand(kh, kw, out_h, out_w).reshape(points, -1)
    base_x = (kx.view(1, kw, 1, 1) + ox.view(1, 1, 1, out_w)).expand(kh, kw, out_h, out_w).reshape(points, -1)

    off = offset.reshape(n, offset_groups, points, 2, out_h * out_w)
    y = (base_y + off[:, :, :, 0]).reshape(n, offset_groups, points * out_h * out_w)
    x = (base_x + off[:, :, :, 1]).reshape(n, offset_groups, points * out_h * out_w)
    image = input.reshape(n, offset_groups, c_in // offset_groups, height, width)
    samples = _bilinear_gather(image, y, x).reshape(n, offset_groups, c_in // offset_groups, points, out_h * out_w)
    if mask is not None:
        samples = samples * mask.reshape(n, offset_groups, 1, points, out_h * out_w)
    return samples.reshape(n, groups, c_in // groups * points, out_h * out_w)


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Same contract as rcm_fsad_ops.deform_conv2d (and torchvision.ops.deform_conv2d).

    input (N, C_in, H, W), offset (N, 2*G*kh*kw, H_out, W_out), weight (C_out, C_in/groups, kh, kw),
    mask (N, G*kh*kw, H_out, W_out) or None -> (N, C_out, H_out, W_out).
    """
    c_out, c_group, kh, kw = weight.shape
    groups = input.shape[1] // c_group
    columns = sampled_columns(input, offset, (kh, kw), groups, stride, padding, dilation, mask)
    out_size = output_size(input.shape[2:], (kh, kw), stride, padding, dilation)
    return columns_times_weight(columns, weight, bias, out_size)


def output_size(size: Sequence[int], kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
                dilation: IntPair = 1) -> Tuple[int, int]:
    """(H_out, W_out) of a convolution over an input of spatial size (H, W).

    As the C++ checks and torchvision compute it, dividing toward zero: a kernel that overhangs the
    padded input by less than the stride still has one output row (its overhang samples zeros),
    where conv2d would raise.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation)

    def outputs(extent: int, k: int, s: int, p: int, d: int) -> int:
        room = extent + 2 * p - (d * (k - 1) + 1)
        return (room // s if room >= 0 else -(-room // s)) + 1

    height, width = size
    return outputs(height, kh, sh, ph, dh), outputs(width, kw, sw, pw, dw)


def columns_times_weight(columns: Tensor, weight: Tensor, bias: Optional[Tensor], out_size: Sequence[int]) -> Tensor:
    """columns (N, groups, C_in/groups * K, L) times weight (C_out, C_in/groups, kh, kw), plus bias
    -> (N, C_out, H_out, W_out)."""
    n, groups = columns.shape[:2]
    c_out = weight.shape[0]
    w = weight.reshape(groups, c_out // groups, weight.shape[1:].numel())
    out = torch.einsum("gok,ngkl->ngol", w, columns).reshape(n, c_out, *out_size)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out
