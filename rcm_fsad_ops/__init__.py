"""rcm_fsad_ops: fast operators for few-shot anomaly detection (RCM-FSAD).

Ops (CPU and CUDA kernels registered under ``torch.ops.rcm_fsad``):
  deform_conv2d   modulated deformable convolution (DCNv2), a drop-in for torchvision.ops.deform_conv2d.
Layers (rcm_fsad_ops.nn): ModulatedDeformConv2d, a drop-in for torchvision.ops.DeformConv2d, and
ModulatedDeformConv2dWithOffsetPredictor, which predicts its own offsets and mask.
ONNX (rcm_fsad_ops.onnx): torch.onnx.export writes the op as ONNX's DeformConv; export() and
translation_table() for graphs that hold the op itself (ExportedPrograms).
"""
import torch  # noqa: F401  (loads libtorch, which _C links against)

try:
    from rcm_fsad_ops import _C  # noqa: F401  (loading it registers the operators)
except ImportError as exc:
    raise ImportError(
        f"rcm_fsad_ops: its compiled extension (rcm_fsad_ops._C) does not load ({exc}). It is either not built, or "
        f"built against another torch than this one ({torch.__version__}): in the checkout run `make build`, or "
        "reinstall with `pip install --no-build-isolation .`") from exc
from rcm_fsad_ops import nn
from rcm_fsad_ops.info import clear_cpu_weight_cache, info
from rcm_fsad_ops.ops.deform_conv2d import deform_conv2d

__version__ = "0.1.0"
__all__ = ["clear_cpu_weight_cache", "deform_conv2d", "info", "nn", "__version__"]
