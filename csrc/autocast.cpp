// Autocast. On CUDA, unlike torchvision, which upcasts deform_conv2d to float32, the op runs in the
// autocast dtype (float16/bfloat16), as conv2d does, and its kernels accumulate in float32. On the
// CPU, where the kernels compute 16-bit tensors in float32 anyway, it runs in float32: casting to 16
// bits there would only add conversions and rounding. Either way every floating-point argument gets
// the same dtype, so a layer whose offsets come from an autocast conv2d works under autocast.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "deform_conv2d.h"

namespace rcm_fsad {
namespace {

// kInAutocastDtype: the autocast dtype of kDevice, else float32.
template <c10::DeviceType kDevice, c10::DispatchKey kAutocastKey, bool kInAutocastDtype>
at::Tensor deform_conv2d_autocast(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocastKey);
  const at::ScalarType dtype = kInAutocastDtype ? at::autocast::get_autocast_dtype(kDevice) : at::kFloat;
  const auto cast = [dtype](const auto& t) { return at::autocast::cached_cast(dtype, t, kDevice); };
  return rcm_fsad::deform_conv2d(cast(input), cast(offset), cast(weight), cast(mask), cast(bias), stride,
                                 padding, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(rcm_fsad, AutocastCPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU, false>);
}

TORCH_LIBRARY_IMPL(rcm_fsad, AutocastCUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA, true>);
}

}  // namespace rcm_fsad
