"""ONNX export of models that call ``rcm_fsad_ops.deform_conv2d`` (and so its layers), through PyTorch's
exporter (``torch.onnx.export(..., dynamo=True)``).

The op becomes ONNX's ``DeformConv`` (opset 19 and later), which has torchvision's semantics: a graph
that onnxruntime and other ONNX runtimes run as they run torchvision's exported layers. Needs onnxscript
(as the exporter does)::

    import rcm_fsad_ops.onnx
    program = rcm_fsad_ops.onnx.export(model, (x,), "model.onnx",
                                       dynamic_shapes={"input": {0: torch.export.Dim("batch")}})

or, for a translation table of one's own, ``torch.onnx.export(model, (x,), dynamo=True,
custom_translation_table={**rcm_fsad_ops.onnx.translation_table(), ...})`` with an opset of at least 19
(torch 2.14's default is 20); an older opset would give a model that no runtime loads.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch

from rcm_fsad_ops import _C  # noqa: F401  (registers the op this module translates)

try:
    from onnxscript import opset19
except ImportError as exc:
    raise ImportError("rcm_fsad_ops.onnx needs onnxscript, as torch.onnx.export(dynamo=True) does: "
                      "pip install onnxscript") from exc

# The first ONNX opset with DeformConv.
MIN_OPSET = 19


def _static_size(tensor: Any, axis: int, name: str) -> int:
    """tensor.shape[axis] of an exporter's symbolic tensor, which must be a number: DeformConv takes
    its kernel shape, group and offset_group as attributes."""
    size = tensor.shape[axis]
    if not isinstance(size, int):
        raise ValueError(f"rcm_fsad_ops.onnx: ONNX DeformConv needs {name}.shape[{axis}] to be static, "
                         f"got the dynamic size {size}")
    return size


def _deform_conv2d_to_onnx(input: Any, offset: Any, weight: Any, mask: Any, bias: Any, stride: Sequence[int],
                           padding: Sequence[int], dilation: Sequence[int]) -> Any:
    """rcm_fsad::deform_conv2d as one DeformConv node. Its arguments are the schema's, as the exporter's
    symbolic tensors and Python ints; groups and offset groups follow from the shapes, as in the op."""
    kh = _static_size(weight, 2, "weight")
    kw = _static_size(weight, 3, "weight")
    groups = _static_size(input, 1, "input") // _static_size(weight, 1, "weight")
    offset_groups = _static_size(offset, 1, "offset") // (2 * kh * kw)
    return opset19.DeformConv(
        input, weight, offset, bias, mask,
        kernel_shape=[kh, kw], strides=list(stride), dilations=list(dilation),
        pads=[padding[0], padding[1], padding[0], padding[1]],  # (top, left, bottom, right)
        group=groups, offset_group=offset_groups)


def translation_table() -> dict[Callable, Callable]:
    """The entries for ``torch.onnx.export``'s ``custom_translation_table`` that this package's ops need."""
    return {torch.ops.rcm_fsad.deform_conv2d.default: _deform_conv2d_to_onnx}


def export(model: torch.nn.Module, args: tuple[Any, ...] = (), f: Optional[Any] = None, *,
           opset_version: Optional[int] = None,
           custom_translation_table: Optional[dict[Callable, Callable]] = None,
           **kwargs: Any) -> torch.onnx.ONNXProgram:
    """``torch.onnx.export(model, args, f, dynamo=True, ...)`` with this package's translations added to
    ``custom_translation_table`` (whose own entries take precedence). The other keyword arguments are
    torch.onnx.export's (dynamic_shapes, input_names, external_data, ...).

    Raises ValueError for an ``opset_version`` below 19, which has no DeformConv.
    """
    if opset_version is not None and opset_version < MIN_OPSET:
        raise ValueError(f"rcm_fsad_ops.onnx.export: expected opset_version of at least {MIN_OPSET} (ONNX has "
                         f"DeformConv since opset {MIN_OPSET}), got {opset_version}")
    table = {**translation_table(), **(custom_translation_table or {})}
    return torch.onnx.export(model, args, f, dynamo=True, opset_version=opset_version,
                             custom_translation_table=table, **kwargs)
