"""rcm_fsad_ops: fast operators for few-shot anomaly detection (RCM-FSAD).

Ops (CPU and CUDA kernels registered under ``torch.ops.rcm_fsad``):
  deform_conv2d   modulated deformable convolution (DCNv2), a drop-in for torchvision.ops.deform_conv2d.
Layers (rcm_fsad_ops.nn): ModulatedDeformConv2d, a drop-in for torchvision.ops.DeformConv2d, and
ModulatedDeformConv2dWithOffsetPredictor, which predicts its own offsets and mask.
"""
import torch  # noqa: F401  (loads libtorch, which _C links against)

from rcm_fsad_ops import _C  # noqa: F401  (loading it registers the operators)
from rcm_fsad_ops import nn
from rcm_fsad_ops.info import info
from rcm_fsad_ops.ops.deform_conv2d import deform_conv2d

__version__ = "0.1.0"
__all__ = ["deform_conv2d", "info", "nn", "__version__"]
