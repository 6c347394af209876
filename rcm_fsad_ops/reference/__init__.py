"""Pure-PyTorch reference implementations: the oracle of the tests and a readable specification."""
from rcm_fsad_ops.reference.deform_conv2d import deform_conv2d

__all__ = ["deform_conv2d"]
