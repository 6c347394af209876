// Every operator schema of the library, in one place. Backends register kernels per dispatch key
// (cpu/, cuda/, autograd.cpp, autocast.cpp); Python registers the fake kernels and the batching rule
// (rcm_fsad_ops/ops/).
#include <torch/library.h>

TORCH_LIBRARY(rcm_fsad, m) {
  // Modulated deformable convolution (DCNv2); mask=None is DCNv1. Same semantics as
  // torchvision.ops.deform_conv2d; groups and offset groups follow from the tensor shapes.
  m.def(
      "deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? mask, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // Gradients with respect to input, offset, weight and mask (an empty tensor when mask is None).
  // The bias gradient is grad_output summed over (N, H_out, W_out), taken by the autograd kernel.
  m.def(
      "deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor weight, "
      "Tensor? mask, int[2] stride, int[2] padding, int[2] dilation) -> "
      "(Tensor grad_input, Tensor grad_offset, Tensor grad_weight, Tensor grad_mask)");
}
