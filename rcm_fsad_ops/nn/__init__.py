"""nn.Modules built on the compiled operators."""
from rcm_fsad_ops.nn.deform_conv import (
    ModulatedDeformConv2d,
    ModulatedDeformConv2dWithOffsetPredictor,
    convert_torchvision_deform_conv2d,
)

__all__ = ["ModulatedDeformConv2d", "ModulatedDeformConv2dWithOffsetPredictor", "convert_torchvision_deform_conv2d"]
