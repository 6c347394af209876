"""Public wrappers of the compiled operators, with their fake kernels and batching rules (their autograd is
C++: csrc/autograd.cpp)."""
from rcm_fsad_ops.ops.deform_conv2d import deform_conv2d

__all__ = ["deform_conv2d"]
