// Autograd of the deform_conv2d operators, a kernel of the Autograd key in C++ (SPEC §4: "or a C++
// autograd kernel"), which torch.compile, torch.export and torch.library.opcheck trace as they do a
// Python-registered one. Two reasons to keep it out of Python:
//   * time: a kernel registered with torch.library.register_autograd crosses from the dispatcher into
//     Python and back on every call, with or without gradients. On the project's 2-core CPU that cost
//     20-30 us a forward without gradients and 120-140 us a forward and backward (benchmarks/NOTES.md,
//     session 29), where a small layer's kernels take tens of microseconds on a GPU;
//   * C++ programs linked against the library (CMakeLists.txt) get the gradients from the same call.
// The backward operator has an autograd kernel of its own, which says that gradients of gradients are
// not supported instead of silently treating the backward as a constant.
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "deform_conv2d.h"

namespace rcm_fsad {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// deform_conv2d_backward, whose results have no gradient of their own.
class DeformConv2dBackwardFunction : public torch::autograd::Function<DeformConv2dBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* /*ctx*/, const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& offset, const at::Tensor& weight,
                               const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    const auto [grad_input, grad_offset, grad_weight, grad_mask] =
        deform_conv2d_backward(grad_output, input, offset, weight, mask, stride, padding, dilation);
    return {grad_input, grad_offset, grad_weight, grad_mask};
  }

  static variable_list backward(AutogradContext* /*ctx*/, const variable_list& /*grads*/) {
    TORCH_CHECK(false, "rcm_fsad.deform_conv2d does not support double backward (gradients of its gradients)");
  }
};

// deform_conv2d, its gradients from deform_conv2d_backward and, for the bias, grad_output summed over
// (N, H_out, W_out).
class DeformConv2dFunction : public torch::autograd::Function<DeformConv2dFunction> {
 public:
  // For compiled autograd: backward reads nothing but its saved tensors and saved_data.
  static constexpr bool is_traceable = true;

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& offset,
                            const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation) {
    at::Tensor output;
    {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      output = deform_conv2d(input, offset, weight, mask, bias, stride, padding, dilation);
    }
    // An undefined tensor stands for no mask.
    ctx->save_for_backward({input, offset, weight, mask.value_or(at::Tensor())});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["has_bias"] = bias.has_value();
    return output;
  }

  // Gradients of input, offset, weight, mask and bias (undefined: none), and none of the three int lists.
  static variable_list backward(AutogradContext* ctx, const variable_list& grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& mask = saved[3];
    const std::vector<int64_t> stride = ctx->saved_data["stride"].toIntVector();
    const std::vector<int64_t> padding = ctx->saved_data["padding"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const at::Tensor& grad_output = grads[0];
    // Through the dispatcher, so that a backward with create_graph meets the backward's own autograd.
    const auto [grad_input, grad_offset, grad_weight, grad_mask] = deform_conv2d_backward(
        grad_output, saved[0], saved[1], saved[2], mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt,
        stride, padding, dilation);
    const at::Tensor grad_bias = ctx->saved_data["has_bias"].toBool() ? grad_output.sum({0, 2, 3}) : at::Tensor();
    return {grad_input, grad_offset, grad_weight, mask.defined() ? grad_mask : at::Tensor(), grad_bias,
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// A C++ caller may pass an optional that holds an undefined tensor: the same as none, as Python's None is,
// for the kernels below, which ask only has_value().
std::optional<at::Tensor> defined_or_none(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t : std::nullopt;
}

at::Tensor deform_conv2d_autograd(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  return DeformConv2dFunction::apply(input, offset, weight, defined_or_none(mask), defined_or_none(bias), stride,
                                     padding, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
    const std::optional<at::Tensor>& mask, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  const variable_list gradients = DeformConv2dBackwardFunction::apply(grad_output, input, offset, weight,
                                                                      defined_or_none(mask), stride, padding, dilation);
  return {gradients[0], gradients[1], gradients[2], gradients[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rcm_fsad, Autograd, m) {
  m.impl("deform_conv2d", &deform_conv2d_autograd);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_autograd);
}

}  // namespace rcm_fsad
