// The C++ library on its own, through its API (csrc/deform_conv2d.h) from a program linked against
// libtorch: with zero offsets and no mask the operator is an ordinary convolution, and its backward, and
// its autograd, give that convolution's gradients (libtorch's autograd of conv2d is the oracle).
#include <torch/torch.h>

#include <iostream>

#include "deform_conv2d.h"

namespace {

// Stride 1, padding 1, dilation 1, no bias.
at::Tensor deform_conv2d(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                         const std::optional<at::Tensor>& mask) {
  return rcm_fsad::deform_conv2d(input, offset, weight, mask, std::nullopt, {1, 1}, {1, 1}, {1, 1});
}

int checks = 0;
int failures = 0;

void expect(bool ok, const char* what) {
  std::cout << (ok ? "PASS " : "FAIL ") << what << "\n";
  ++checks;
  failures += ok ? 0 : 1;
}

}  // namespace

int main() {
  torch::manual_seed(0);
  const auto options = torch::dtype(torch::kFloat64);
  const at::Tensor input = torch::randn({2, 5, 7, 6}, options);
  const at::Tensor weight = torch::randn({4, 5, 3, 3}, options);
  const at::Tensor offset = torch::zeros({2, 18, 7, 6}, options);
  const at::Tensor expected = torch::conv2d(input, weight, {}, 1, 1);

  expect(torch::allclose(deform_conv2d(input, offset, weight, std::nullopt), expected, 1e-12, 1e-12),
         "zero offsets without a mask equal conv2d");
  const at::Tensor half_mask = torch::full({2, 9, 7, 6}, 0.5, options);
  expect(torch::allclose(deform_conv2d(input, offset, weight, half_mask), expected * 0.5, 1e-12, 1e-12),
         "a constant mask of 0.5 halves conv2d");
  // Shifting every sample by one pixel to the right equals convolving the shifted image, except in
  // output column 0, whose leftmost tap reads pixel 0 where the shifted image has zero padding.
  at::Tensor shift = torch::zeros({2, 9, 2, 7, 6}, options);
  shift.select(2, 1).fill_(1.0);
  const at::Tensor shifted_input = torch::nn::functional::pad(
      input.narrow(3, 1, 5), torch::nn::functional::PadFuncOptions({0, 1, 0, 0}));
  expect(torch::allclose(deform_conv2d(input, shift.view({2, 18, 7, 6}), weight, std::nullopt).narrow(3, 1, 5),
                         torch::conv2d(shifted_input, weight, {}, 1, 1).narrow(3, 1, 5), 1e-12, 1e-12),
         "a uniform offset of one pixel equals conv2d of the shifted image");

  bool raised = false;
  try {
    deform_conv2d(input, offset.narrow(1, 0, 17), weight, std::nullopt);
  } catch (const c10::Error& e) {
    raised = std::string(e.what()).find("offset.shape[1]") != std::string::npos;
  }
  expect(raised, "a bad offset shape raises an error naming offset.shape[1]");

  const at::Tensor leaf_input = input.clone().requires_grad_(true);
  const at::Tensor leaf_weight = weight.clone().requires_grad_(true);
  const at::Tensor grad_output = torch::randn_like(expected);
  torch::conv2d(leaf_input, leaf_weight, {}, 1, 1).backward(grad_output);
  const auto [grad_input, grad_offset, grad_weight, grad_mask] =
      rcm_fsad::deform_conv2d_backward(grad_output, input, offset, weight, std::nullopt, {1, 1}, {1, 1}, {1, 1});
  expect(torch::allclose(grad_input, leaf_input.grad(), 1e-12, 1e-12) &&
             torch::allclose(grad_weight, leaf_weight.grad(), 1e-12, 1e-12),
         "the backward's input and weight gradients at zero offsets equal conv2d's");
  expect(grad_offset.sizes() == offset.sizes() && grad_mask.numel() == 0,
         "the backward gives an offset gradient of offset's shape and an empty mask gradient without a mask");

  // Autograd through the same call: at zero offsets the input, weight and bias gradients are conv2d's,
  // and a gradient of those gradients is refused.
  const at::Tensor bias = torch::randn({4}, options);
  const at::Tensor ours_input = input.clone().requires_grad_(true);
  const at::Tensor ours_offset = offset.clone().requires_grad_(true);
  const at::Tensor ours_weight = weight.clone().requires_grad_(true);
  const at::Tensor ours_bias = bias.clone().requires_grad_(true);
  const at::Tensor theirs_input = input.clone().requires_grad_(true);
  const at::Tensor theirs_weight = weight.clone().requires_grad_(true);
  const at::Tensor theirs_bias = bias.clone().requires_grad_(true);
  const at::Tensor ours_output =
      rcm_fsad::deform_conv2d(ours_input, ours_offset, ours_weight, std::nullopt, ours_bias, {1, 1}, {1, 1}, {1, 1});
  ours_output.backward(grad_output);
  torch::conv2d(theirs_input, theirs_weight, theirs_bias, 1, 1).backward(grad_output);
  expect(torch::allclose(ours_input.grad(), theirs_input.grad(), 1e-12, 1e-12) &&
             torch::allclose(ours_weight.grad(), theirs_weight.grad(), 1e-12, 1e-12) &&
             torch::allclose(ours_bias.grad(), theirs_bias.grad(), 1e-12, 1e-12),
         "autograd gives conv2d's input, weight and bias gradients at zero offsets");
  expect(ours_offset.grad().defined() && ours_offset.grad().sizes() == offset.sizes(),
         "autograd gives an offset gradient of offset's shape");
  // The output is linear in a constant mask m: d<grad_output, output>/dm = <grad_output, conv2d>, the
  // mask gradient's sum.
  const at::Tensor ours_mask = half_mask.clone().requires_grad_(true);
  rcm_fsad::deform_conv2d(input, offset, weight, ours_mask, std::nullopt, {1, 1}, {1, 1}, {1, 1}).backward(grad_output);
  expect(torch::allclose(ours_mask.grad().sum(), (grad_output * expected).sum(), 1e-12, 1e-12),
         "autograd's mask gradient sums to grad_output times conv2d at zero offsets and a constant mask");
  // An optional holding an undefined tensor is no mask and no bias, as std::nullopt is.
  const at::Tensor undefined;
  expect(torch::equal(rcm_fsad::deform_conv2d(input, offset, weight, undefined, undefined, {1, 1}, {1, 1}, {1, 1}),
                      deform_conv2d(input, offset, weight, std::nullopt)),
         "an undefined mask and bias are none");
  {
    const torch::NoGradGuard no_grad;
    expect(!rcm_fsad::deform_conv2d(ours_input, offset, weight, std::nullopt, std::nullopt, {1, 1}, {1, 1}, {1, 1})
                .requires_grad(),
           "under NoGradGuard the output records no graph");
  }
  const at::Tensor grad_of_input =
      torch::autograd::grad({rcm_fsad::deform_conv2d(ours_input, offset, weight, std::nullopt, std::nullopt, {1, 1},
                                                     {1, 1}, {1, 1})
                                 .square()
                                 .sum()},
                            {ours_input}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  raised = false;
  try {
    grad_of_input.sum().backward();
  } catch (const c10::Error& e) {
    raised = std::string(e.what()).find("double backward") != std::string::npos;
  }
  expect(raised, "a gradient of the gradients raises an error saying double backward is not supported");

  std::cout << (checks - failures) << " passed, " << failures << " failed\n";
  return failures == 0 ? 0 : 1;
}
