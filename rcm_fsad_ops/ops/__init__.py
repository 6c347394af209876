"""Public wrappers of the compiled operators, with their fake kernels and autograd formulas."""
from rcm_fsad_ops.ops.deform_conv2d import deform_conv2d

__all__ = ["deform_conv2d"]
