"""Modulated deformable convolution (DCNv2): ``torch.ops.rcm_fsad.deform_conv2d``.

The public function has the signature and semantics of ``torchvision.ops.deform_conv2d``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from rcm_fsad_ops import _C  # noqa: F401  (registers the schemas and kernels)

IntPair = Union[int, Tuple[int, int], Sequence[int]]


def _pair(value: IntPair, name: str) -> list[int]:
    if isinstance(value, int):
        return [value, value]
    values = list(value)
    if len(values) != 2 or not all(isinstance(v, int) for v in values):
        raise ValueError(f"deform_conv2d: expected {name} to be an int or a pair of ints, got {value!r}")
    return values


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
    """Deformable convolution v2 (modulated; v1 when ``mask`` is None).

    Args:
        input: (N, C_in, H, W).
        offset: (N, 2*G*kh*kw, H_out, W_out); channel 2*(g*kh*kw + i*kw + j) is dy and the next
            one dx of kernel point (i, j) of offset group g. G divides C_in.
        weight: (C_out, C_in/groups, kh, kw); groups = C_in / weight.shape[1].
        bias: (C_out,) or None.
        stride, padding, dilation: int or (h, w).
        mask: (N, G*kh*kw, H_out, W_out) modulation, or None for DCNv1.

    Returns:
        (N, C_out, H_out, W_out), channels_last when ``input`` is channels_last.

    Samples are bilinear, corners outside the image read zero. Gradients flow to input, offset,
    weight, mask and bias, with torchvision's convention at the -1 border (the offset gradient of a
    sample exactly on y = -1 or x = -1 is not zeroed, unlike mmcv). Double backward is not supported.
    Float32/float64 on CPU, and float16/bfloat16 computed there in float32 (converted on entry, the
    results rounded back); float32/float64/float16/bfloat16 on CUDA (float32 accumulation); under
    CUDA autocast the op runs in the autocast dtype. On sm_80+ the CUDA forward uses tensor cores for
    float16/bfloat16, and for float32 only when ``torch.backends.cuda.matmul.allow_tf32`` is set.

    Determinism: the CPU backward is always deterministic. The CUDA backward scatters the input
    gradient with float atomics by default (run-to-run differences in the last bits); under
    ``torch.use_deterministic_algorithms(True)`` it does not raise but switches to a deterministic
    backward instead: the input gradient is accumulated without atomics, one thread per (image,
    band of output pixels, channel) reading each sample from a table computed once, into per-band
    partial gradients (at most 256 MB in all) summed in a fixed order; bitwise reproducible and slower. The weight gradient comes from cuBLAS GEMMs on one
    stream, deterministic under PyTorch's own rules: versions of PyTorch that check
    ``CUBLAS_WORKSPACE_CONFIG`` raise their own error until it is set (e.g. to ``:4096:8``).
    """
    return torch.ops.rcm_fsad.deform_conv2d.default(
        input, offset, weight, mask, bias,
        _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"),
    )


def _output_memory_format(input: Tensor) -> torch.memory_format:
    """Mirror of output_memory_format in csrc/deform_conv2d_args.cpp."""
    channels_last = input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _output_size(input: Tensor, weight: Tensor, stride, padding, dilation) -> Tuple[int, int]:
    kh, kw = weight.shape[-2:]
    out_h = (input.shape[2] + 2 * padding[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    out_w = (input.shape[3] + 2 * padding[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    return out_h, out_w


@torch.library.register_fake("rcm_fsad::deform_conv2d")
def _deform_conv2d_fake(input, offset, weight, mask, bias, stride, padding, dilation):
    torch._check(input.dim() == 4, lambda: f"deform_conv2d: expected a 4-D input, got {input.dim()}-D")
    torch._check(weight.dim() == 4, lambda: f"deform_conv2d: expected a 4-D weight, got {weight.dim()}-D")
    for name, t in (("offset", offset), ("weight", weight), ("mask", mask), ("bias", bias)):
        torch._check(
            t is None or t.device == input.device,
            lambda: f"deform_conv2d: expected {name} to be on the same device as input ({input.device})",
        )
    out_h, out_w = _output_size(input, weight, stride, padding, dilation)
    return torch.empty(
        (input.shape[0], weight.shape[0], out_h, out_w), dtype=input.dtype, device=input.device,
        memory_format=_output_memory_format(input),
    )


@torch.library.register_fake("rcm_fsad::deform_conv2d_backward")
def _deform_conv2d_backward_fake(grad_output, input, offset, weight, mask, stride, padding, dilation):
    grad_input = torch.empty(input.shape, dtype=input.dtype, device=input.device,
                             memory_format=_output_memory_format(input))
    grad_mask = torch.empty_like(mask) if mask is not None else input.new_empty((0,))
    return grad_input, torch.empty_like(offset), weight.new_empty(weight.shape), grad_mask


def _setup_context(ctx, inputs, output):
    input, offset, weight, mask, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.geometry = (stride, padding, dilation)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    input, offset, weight, mask = ctx.saved_tensors
    grad_input, grad_offset, grad_weight, grad_mask = torch.ops.rcm_fsad.deform_conv2d_backward.default(
        grad_output, input, offset, weight, mask, *ctx.geometry
    )
    grad_bias = grad_output.sum((0, 2, 3)) if ctx.has_bias else None
    return (grad_input, grad_offset, grad_weight, grad_mask if mask is not None else None, grad_bias,
            None, None, None)


torch.library.register_autograd("rcm_fsad::deform_conv2d", _backward, setup_context=_setup_context)


def _double_backward(ctx, *grads):
    raise RuntimeError(
        "rcm_fsad.deform_conv2d does not support double backward (gradients of its gradients)"
    )


def _setup_backward_context(ctx, inputs, output):
    pass


torch.library.register_autograd(
    "rcm_fsad::deform_conv2d_backward", _double_backward, setup_context=_setup_backward_context
)
