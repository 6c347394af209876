"""Modulated deformable convolution (DCNv2): ``torch.ops.rcm_fsad.deform_conv2d``.

The public function has the signature and semantics of ``torchvision.ops.deform_conv2d``.
"""
from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.torch_version import TorchVersion

from rcm_fsad_ops import _C  # noqa: F401  (registers the schemas and kernels)
from rcm_fsad_ops.onnx import deform_conv_node
from rcm_fsad_ops.reference import output_size

# During torch.onnx.export the function returns ONNX's DeformConv node (rcm_fsad_ops.onnx), made by
# torch.onnx.ops.symbolic, which torch 2.8 brought. torch.compiler.is_exporting() is asked first: it takes
# 26 ns a call, torch.onnx.is_in_onnx_export() 1.1 us.
_EMITS_ONNX_NODE = TorchVersion(torch.__version__) >= "2.8"

# In the types TorchScript knows; outside it _pair takes more (anything with __index__, iterables).
IntPair = Union[int, Tuple[int, int], List[int]]


def _pair(value: object, name: str) -> List[int]:
    """What torchvision takes: an integral scalar (int, bool, NumPy integer, anything with __index__)
    or an iterable of two; a 0-d integer tensor, which torchvision rejects, counts as its value."""
    # A 0-d tensor or array is iterable by type but not in fact, so it is taken as a scalar.
    items: List[Any] = (list(value) if isinstance(value, Iterable) and getattr(value, "ndim", None) != 0
                        else [value, value])
    try:
        values = [operator.index(v) for v in items]
    except TypeError:
        raise TypeError(f"deform_conv2d: expected {name} to be an int or a pair of ints, got {value!r}") from None
    if len(values) != 2:
        raise ValueError(f"deform_conv2d: expected {name} to be an int or a pair of ints, got {len(values)} "
                         f"values: {value!r}")
    return values


def _scripted_pair(value: IntPair) -> List[int]:
    """_pair under TorchScript, which types the value: the op's schema checks a list's length."""
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, tuple):
        return [value[0], value[1]]
    return value


def _check_tensor_args(input: object, offset: object, weight: object, bias: object, mask: object) -> None:
    """A clear error naming the argument where a tensor is missing, is something else or is not a dense
    one: the dispatcher's own ("tensor does not have a device", "Could not run ... from the 'SparseCPU'
    backend", a nested tensor's "Internal error") names none. bias and mask may be None."""
    for name, value in (("input", input), ("offset", offset), ("weight", weight), ("bias", bias), ("mask", mask)):
        optional = name in ("bias", "mask")
        if value is None and optional:
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"deform_conv2d: expected {name} to be a Tensor{' or None' if optional else ''}, "
                            f"got {type(value).__name__}")
        if value.layout != torch.strided or value.is_nested:
            kind = "nested" if value.is_nested else str(value.layout)
            raise TypeError(f"deform_conv2d: expected {name} to be a dense tensor, got a {kind} one")


def _reject_forward_ad(tensors: Sequence[Optional[Tensor]]) -> None:
    """The op's autograd (a C++ torch::autograd::Function, csrc/autograd.cpp) is reverse mode only: forward
    mode (torch.func.jvp, jacfwd, dual tensors) gets PyTorch's generic refusal from it, which names neither
    the op nor what to use instead. This error does. The level is -1 outside any dual level, so the common
    case costs one comparison (a private name: should it go, every call checks)."""
    if getattr(fwAD, "_current_level", 0) >= 0 and any(
            t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors):
        raise NotImplementedError(
            "deform_conv2d does not support forward-mode AD (torch.func.jvp, jacfwd, forward_ad dual tensors); "
            "use reverse mode (Tensor.backward, torch.autograd.grad)")


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
        stride, padding, dilation: int or (h, w) (any integral values, e.g. NumPy integers,
            except under TorchScript, which scripts this function as torchvision's).
        mask: (N, G*kh*kw, H_out, W_out) modulation, or None for DCNv1.

    Returns:
        (N, C_out, H_out, W_out), channels_last when ``input`` is channels_last.

    Samples are bilinear, corners outside the image read zero. Gradients flow to input, offset,
    weight, mask and bias, with torchvision's convention at the -1 border (the offset gradient of a
    sample exactly on y = -1 or x = -1 is not zeroed, unlike mmcv). Double backward and forward-mode AD
    are not supported (both raise).
    Float32/float64 on CPU, and float16/bfloat16 computed there in float32 (converted on entry, the
    results rounded back), except bfloat16 on a CPU with AVX512-BF16 and oneDNN on
    (``rcm_fsad_ops.info()["cpu_bfloat16_gemms"]``) for a layer of at least 4096 multiply-adds a conv
    group and output pixel whose GEMMs reduce over whole multiples of 32 values (a group's kernel points
    x input channels, and its output channels; README: CPU): its forward rounds the sampled columns to
    bfloat16 for GEMMs that sum in float32, and its backward computes the columns' gradient in such GEMMs,
    rounded to bfloat16; float32 GEMMs (and the weight gradient's float32 sums) run in oneDNN where it is
    on and torch has the ops they take (``cpu_float32_gemms``), else in BLAS;
    float32/float64/float16/bfloat16 on CUDA (16-bit types accumulate in float32); under CUDA autocast
    the op runs in the autocast dtype, under CPU autocast in bfloat16 where a bfloat16 forward
    multiplies in bfloat16 (``cpu_bfloat16_gemms``), else in float32. On
    sm_80+ the CUDA forward uses tensor cores for float16/bfloat16; for float32 in TF32 when
    ``torch.backends.cuda.matmul.allow_tf32`` is set, and otherwise, where its kernel applies, on
    operands split in two TF32 parts, which keeps float32's accuracy.

    Under ``torch.onnx.export`` (dynamo=True) it returns ONNX's DeformConv node instead (rcm_fsad_ops.onnx).

    Determinism: the CPU backward is always deterministic. The CUDA backward scatters the input
    gradient with float atomics by default (run-to-run differences in the last bits); under
    ``torch.use_deterministic_algorithms(True)`` it does not raise but switches to a deterministic
    backward instead: the input gradient is gathered without atomics, the samples' corners sorted
    stably by the input pixel and offset group they land on, then one thread per input element adding
    its corners in the order of their output pixels; bitwise reproducible and slower. The weight gradient comes
    from cuBLAS GEMMs on one stream, deterministic under PyTorch's own rules: versions of PyTorch that check
    ``CUBLAS_WORKSPACE_CONFIG`` raise their own error until it is set (e.g. to ``:4096:8``).
    """
    if torch.jit.is_scripting():
        return torch.ops.rcm_fsad.deform_conv2d(input, offset, weight, mask, bias, _scripted_pair(stride),
                                                _scripted_pair(padding), _scripted_pair(dilation))
    _check_tensor_args(input, offset, weight, bias, mask)
    if _EMITS_ONNX_NODE and torch.compiler.is_exporting() and torch.onnx.is_in_onnx_export():
        return deform_conv_node(input, offset, weight, bias, _pair(stride, "stride"), _pair(padding, "padding"),
                                _pair(dilation, "dilation"), mask)
    _reject_forward_ad((input, offset, weight, mask, bias))
    return torch.ops.rcm_fsad.deform_conv2d.default(
        input, offset, weight, mask, bias,
        _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation"),
    )


def _output_memory_format(t: Tensor) -> torch.memory_format:
    """The layout of a result shaped like t (the output and input gradient like the input, the weight
    gradient like the weight): mirror of output_memory_format in csrc/deform_conv2d_args.cpp."""
    channels_last = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _check_rank4(t: Tensor, name: str, layout: str) -> None:
    torch._check(t.dim() == 4, lambda: f"deform_conv2d: expected {name} to be a 4-D tensor {layout}, "
                                        f"got a {t.dim()}-D tensor of shape {list(t.shape)}")


def _check_float(t: Tensor, name: str, input: Tensor) -> None:
    torch._check(t.dtype.is_floating_point,
                 lambda: f"deform_conv2d: expected {name} to be a floating-point tensor, got dtype {t.dtype}")
    torch._check(t.dtype == input.dtype,
                 lambda: f"deform_conv2d: expected {name} to have the same dtype as input ({input.dtype}), "
                         f"got {t.dtype}")
    torch._check(t.device == input.device,
                 lambda: f"deform_conv2d: expected {name} to be on the same device as input ({input.device}), "
                         f"got {t.device}")


def _check_pair(values: Sequence[int], name: str, minimum: int) -> None:
    torch._check(len(values) == 2, lambda: f"deform_conv2d: expected {name} to have 2 values, got {list(values)}")
    torch._check(values[0] >= minimum and values[1] >= minimum,
                 lambda: f"deform_conv2d: expected {name} values to be at least {minimum}, got {list(values)}")


def _check_args(input: Tensor, offset: Tensor, weight: Tensor, mask: Optional[Tensor], bias: Optional[Tensor],
                stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> Tuple[int, int]:
    """The checks of check_deform_conv2d_args in csrc/deform_conv2d_args.cpp, in the same order and with
    the same messages, for the fake kernels (meta tensors, torch.compile and export); returns the output
    size. torch._check, since under dynamic shapes the sizes are symbolic."""
    _check_rank4(input, "input", "(N, C_in, H, W)")
    _check_rank4(weight, "weight", "(C_out, C_in/groups, kh, kw)")
    _check_rank4(offset, "offset", "(N, 2*offset_groups*kh*kw, H_out, W_out)")
    torch._check(input.dtype.is_floating_point,
                 lambda: f"deform_conv2d: expected input to be a floating-point tensor, got dtype {input.dtype}")
    _check_float(weight, "weight", input)
    _check_float(offset, "offset", input)
    _check_pair(stride, "stride", 1)
    _check_pair(padding, "padding", 0)
    _check_pair(dilation, "dilation", 1)

    batch, channels, height, width = input.shape
    out_channels, channels_per_group, kh, kw = weight.shape
    torch._check(kh > 0 and kw > 0, lambda: f"deform_conv2d: expected weight to have a non-empty kernel, "
                                            f"got weight of shape {list(weight.shape)}")
    torch._check(channels > 0, lambda: f"deform_conv2d: expected input to have at least one channel, "
                                       f"got input of shape {list(input.shape)}")
    torch._check(channels_per_group > 0 and channels % channels_per_group == 0,
                 lambda: f"deform_conv2d: weight.shape[1] (C_in/groups = {channels_per_group}) must divide the "
                         f"input channels ({channels})")
    groups = channels // channels_per_group
    torch._check(out_channels % groups == 0,
                 lambda: f"deform_conv2d: groups ({groups}, from input channels / weight.shape[1]) must divide "
                         f"the output channels (weight.shape[0] = {out_channels})")

    points = kh * kw
    torch._check(offset.shape[1] > 0 and offset.shape[1] % (2 * points) == 0,
                 lambda: f"deform_conv2d: offset.shape[1] must be a positive multiple of 2*kh*kw = {2 * points} "
                         f"(2*offset_groups*kh*kw), got {offset.shape[1]}")
    offset_groups = offset.shape[1] // (2 * points)
    torch._check(channels % offset_groups == 0,
                 lambda: f"deform_conv2d: offset groups ({offset_groups}, from offset.shape[1] / (2*kh*kw)) must "
                         f"divide the input channels ({channels})")

    out_h, out_w = output_size((height, width), (kh, kw), stride, padding, dilation)
    torch._check(out_h > 0 and out_w > 0,
                 lambda: f"deform_conv2d: the output would be empty: input of size {height}x{width} with kernel "
                         f"{kh}x{kw}, padding {list(padding)}, dilation {list(dilation)}, stride {list(stride)}")

    torch._check(offset.shape[0] == batch and offset.shape[2] == out_h and offset.shape[3] == out_w,
                 lambda: f"deform_conv2d: expected offset of shape ({batch}, {offset.shape[1]}, {out_h}, {out_w}) "
                         f"to match the batch and output size, got {list(offset.shape)}")
    if mask is not None:
        _check_rank4(mask, "mask", "(N, offset_groups*kh*kw, H_out, W_out)")
        _check_float(mask, "mask", input)
        torch._check(list(mask.shape) == [batch, offset_groups * points, out_h, out_w],
                     lambda: f"deform_conv2d: expected mask of shape ({batch}, {offset_groups * points}, {out_h}, "
                             f"{out_w}), got {list(mask.shape)}")
    if bias is not None:
        _check_float(bias, "bias", input)
        torch._check(bias.dim() == 1 and bias.shape[0] == out_channels,
                     lambda: f"deform_conv2d: expected bias of shape ({out_channels}), got {list(bias.shape)}")
    return out_h, out_w


@torch.library.register_fake("rcm_fsad::deform_conv2d")
def _deform_conv2d_fake(input, offset, weight, mask, bias, stride, padding, dilation):
    out_h, out_w = _check_args(input, offset, weight, mask, bias, stride, padding, dilation)
    return torch.empty(
        (input.shape[0], weight.shape[0], out_h, out_w), dtype=input.dtype, device=input.device,
        memory_format=_output_memory_format(input),
    )


@torch.library.register_fake("rcm_fsad::deform_conv2d_backward")
def _deform_conv2d_backward_fake(grad_output, input, offset, weight, mask, stride, padding, dilation):
    out_h, out_w = _check_args(input, offset, weight, mask, None, stride, padding, dilation)
    _check_float(grad_output, "grad_output", input)
    expected = [input.shape[0], weight.shape[0], out_h, out_w]
    torch._check(grad_output.dim() == 4 and list(grad_output.shape) == expected,
                 lambda: f"deform_conv2d_backward: expected grad_output of shape "
                         f"({', '.join(map(str, expected))}), got {list(grad_output.shape)}")
    grad_input = torch.empty_like(input, memory_format=_output_memory_format(input))
    grad_weight = torch.empty_like(weight, memory_format=_output_memory_format(weight))
    grad_mask = torch.empty_like(mask) if mask is not None else input.new_empty((0,))
    return grad_input, torch.empty_like(offset), grad_weight, grad_mask


def _one_index(t: Optional[Tensor], dim: Optional[int]) -> Optional[Tensor]:
    """A meta tensor of the shape and dtype one index of a vmapped dimension `dim` (None: not vmapped)
    of `t` has."""
    if t is None:
        return None
    shape = list(t.shape)
    if dim is not None:
        del shape[dim]
    return torch.empty(shape, dtype=t.dtype, device="meta")


def _deform_conv2d_vmap(info, in_dims, input, offset, weight, mask, bias, stride, padding, dilation):
    """torch.vmap's batching rule: when only input, offset and mask are vmapped (one layer over many
    batches), the vmapped dimension folds into N and the op runs once; a vmapped weight or bias runs
    it once per index. (Without a rule PyTorch would run it per index with a warning.)"""
    input_dim, offset_dim, weight_dim, mask_dim, bias_dim = in_dims[:5]
    size = info.batch_size
    args = (input, offset, weight, mask, bias)
    if size == 0:
        # No index to run: the op once on zeros of one index's shape (sums over the empty dimension), so
        # that the empty output is still connected to every argument's gradient, and bad sizes are
        # reported as one index has them.
        out = torch.ops.rcm_fsad.deform_conv2d.default(
            *(t if t is None or dim is None else t.sum(dim) for t, dim in zip(args, in_dims[:5])),
            stride, padding, dilation)
        return out.unsqueeze(0)[:0], 0
    if weight_dim is None and bias_dim is None:
        def fold(t: Optional[Tensor], dim: Optional[int]) -> Optional[Tensor]:
            if t is None:
                return None
            t = t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)
            return t.reshape(size * t.shape[1], *t.shape[2:])

        try:
            out = torch.ops.rcm_fsad.deform_conv2d.default(fold(input, input_dim), fold(offset, offset_dim), weight,
                                                           fold(mask, mask_dim), bias, stride, padding, dilation)
        except (RuntimeError, IndexError):
            # The op's message gives the folded sizes: the same checks on one index's raise in its sizes.
            _check_args(*map(_one_index, args, in_dims[:5]), stride, padding, dilation)
            raise
        # Not -1: where an enclosing vmap's dimension is empty, the tensor has no elements to infer it from.
        return out.reshape(size, out.shape[0] // size, *out.shape[1:]), 0

    def pick(t: Optional[Tensor], dim: Optional[int], i: int) -> Optional[Tensor]:
        return t if t is None or dim is None else t.select(dim, i)

    return torch.stack([
        torch.ops.rcm_fsad.deform_conv2d.default(
            pick(input, input_dim, i), pick(offset, offset_dim, i), pick(weight, weight_dim, i),
            pick(mask, mask_dim, i), pick(bias, bias_dim, i), stride, padding, dilation)
        for i in range(size)
    ]), 0


# register_vmap is new in torch 2.5: before it, vmap runs the op once per index (PyTorch's fallback).
if hasattr(torch.library, "register_vmap"):
    torch.library.register_vmap("rcm_fsad::deform_conv2d", _deform_conv2d_vmap)
