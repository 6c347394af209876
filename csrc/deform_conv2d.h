// The C++ API of the deform_conv2d operators, for programs linked against librcm_fsad_ops
// (CMakeLists.txt): typed calls through the dispatcher, which picks the CPU or CUDA kernel as
// torch.ops.rcm_fsad.* does in Python. Schemas and semantics: csrc/ops.cpp, and
// rcm_fsad_ops.deform_conv2d's docstring. deform_conv2d records the autograd graph as in Python
// (csrc/autograd.cpp): its gradients also come from deform_conv2d_backward, and the bias gradient is
// grad_output summed over N, H and W.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace rcm_fsad {

// input (N, C_in, H, W), offset (N, 2*G*kh*kw, H_out, W_out), weight (C_out, C_in/groups, kh, kw),
// mask (N, G*kh*kw, H_out, W_out) or none (DCNv1), bias (C_out) or none -> (N, C_out, H_out, W_out).
inline at::Tensor deform_conv2d(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rcm_fsad::deform_conv2d", "")
                             .typed<decltype(deform_conv2d)>();
  return op.call(input, offset, weight, mask, bias, stride, padding, dilation);
}

// The gradients of input, offset, weight and mask (an empty tensor without a mask) for grad_output
// (N, C_out, H_out, W_out).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& mask, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rcm_fsad::deform_conv2d_backward", "")
                             .typed<decltype(deform_conv2d_backward)>();
  return op.call(grad_output, input, offset, weight, mask, stride, padding, dilation);
}

}  // namespace rcm_fsad
