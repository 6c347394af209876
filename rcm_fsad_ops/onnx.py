"""ONNX export of ``rcm_fsad_ops.deform_conv2d`` as ONNX's ``DeformConv`` (opset 19 and later), which has
torchvision's semantics and which onnxruntime runs.

PyTorch's exporter (``torch.onnx.export(..., dynamo=True)``, its default) needs nothing more: during an
export the function, and so the layers, emit the DeformConv node themselves (``deform_conv_node``), as
torchvision's op does. A graph that already holds the op itself, an ``ExportedProgram`` that
``torch.export`` traced outside an export, needs a translation for it: ``export`` adds it, or pass
``translation_table()`` as torch.onnx.export's ``custom_translation_table`` (that one needs onnxscript,
as the exporter does).

The model's opset must be 19 or later (torch 2.14's default is 20): an older one gives a graph that no
runtime loads, which ``export`` refuses up front. Channel counts must be static, since DeformConv takes its
groups as attributes; batch and image sizes may be dynamic.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from rcm_fsad_ops import _C  # noqa: F401  (registers the op that the translation table translates)

# The first ONNX opset with DeformConv.
MIN_OPSET = 19


def _static(size: Any, what: str) -> int:
    """A size that DeformConv takes as an attribute: a number, not a dynamic size (a torch.SymInt, or the
    onnxscript exporter's symbolic dimension)."""
    if not isinstance(size, int):
        raise ValueError(f"rcm_fsad_ops.onnx: ONNX DeformConv needs {what} to be static, got the dynamic size {size}")
    return size


def deform_conv_attributes(input_shape: Sequence[Any], offset_shape: Sequence[Any], weight_shape: Sequence[Any],
                           stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]) -> dict[str, Any]:
    """DeformConv's attributes for deform_conv2d's arguments: groups and offset groups follow from the
    channel counts, as in the op. Shapes: input (N, C_in, H, W), offset (N, 2*G*kh*kw, H_out, W_out),
    weight (C_out, C_in/groups, kh, kw)."""
    kh = _static(weight_shape[2], "weight.shape[2]")
    kw = _static(weight_shape[3], "weight.shape[3]")
    return {
        "kernel_shape": [kh, kw],
        "strides": list(stride),
        "dilations": list(dilation),
        "pads": [padding[0], padding[1], padding[0], padding[1]],  # (top, left, bottom, right)
        "group": _static(input_shape[1], "input.shape[1]") // _static(weight_shape[1], "weight.shape[1]"),
        "offset_group": _static(offset_shape[1], "offset.shape[1]") // (2 * kh * kw),
    }


def deform_conv_node(input: Tensor, offset: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
                     padding: Sequence[int], dilation: Sequence[int], mask: Optional[Tensor]) -> Tensor:
    """What deform_conv2d returns during torch.onnx.export: one DeformConv node, after the op's own argument
    checks. Returns (N, C_out, H_out, W_out)."""
    from rcm_fsad_ops.ops.deform_conv2d import _check_args

    out_h, out_w = _check_args(input, offset, weight, mask, bias, stride, padding, dilation)
    return torch.onnx.ops.symbolic(
        "DeformConv", (input, weight, offset, bias, mask),
        deform_conv_attributes(input.shape, offset.shape, weight.shape, stride, padding, dilation),
        dtype=input.dtype, shape=(input.shape[0], weight.shape[0], out_h, out_w), version=MIN_OPSET)


def _translate_deform_conv2d(input: Any, offset: Any, weight: Any, mask: Any, bias: Any, stride: Sequence[int],
                             padding: Sequence[int], dilation: Sequence[int]) -> Any:
    """rcm_fsad::deform_conv2d as one DeformConv node, for the exporter's translation of a graph holding the
    op: the schema's arguments as the exporter's symbolic tensors and Python ints."""
    from onnxscript import opset19

    return opset19.DeformConv(input, weight, offset, bias, mask,
                              **deform_conv_attributes(input.shape, offset.shape, weight.shape, stride, padding,
                                                       dilation))


def translation_table() -> dict[Callable, Callable]:
    """The entries for ``torch.onnx.export``'s ``custom_translation_table`` that a graph holding this
    package's ops needs. Raises ImportError without onnxscript."""
    try:
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError("rcm_fsad_ops.onnx.translation_table needs onnxscript, as torch.onnx.export(dynamo=True) "
                          "does: pip install onnxscript") from exc
    return {torch.ops.rcm_fsad.deform_conv2d.default: _translate_deform_conv2d}


def export(model: torch.nn.Module | torch.export.ExportedProgram, args: tuple[Any, ...] = (), f: Optional[Any] = None,
           *, opset_version: Optional[int] = None, custom_translation_table: Optional[dict[Callable, Callable]] = None,
           **kwargs: Any) -> torch.onnx.ONNXProgram:
    """``torch.onnx.export(model, args, f, dynamo=True, ...)`` with this package's translation table added to
    ``custom_translation_table`` (whose own entries take precedence), so that an ExportedProgram holding the
    op exports too. The other keyword arguments are torch.onnx.export's (dynamic_shapes, input_names,
    external_data, ...).

    Raises ValueError for an ``opset_version`` below 19, which has no DeformConv.
    """
    if opset_version is not None and opset_version < MIN_OPSET:
        raise ValueError(f"rcm_fsad_ops.onnx.export: expected opset_version of at least {MIN_OPSET} (ONNX has "
                         f"DeformConv since opset {MIN_OPSET}), got {opset_version}")
    table = {**translation_table(), **(custom_translation_table or {})}
    program = torch.onnx.export(model, args, f, dynamo=True, opset_version=opset_version,
                                custom_translation_table=table, **kwargs)
    assert program is not None  # only the TorchScript-based exporter (dynamo=False) returns None
    return program
