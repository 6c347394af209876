"""Pure-PyTorch reference implementations: the oracle of the tests and a readable specification."""
from rcm_fsad_ops.reference.deform_conv2d import columns_times_weight, deform_conv2d, output_size, sampled_columns

__all__ = ["columns_times_weight", "deform_conv2d", "output_size", "sampled_columns"]
