// Autocast: unlike torchvision, which upcasts deform_conv2d to float32 on CUDA and has no CPU policy,
// the op runs in the autocast dtype (float16/bfloat16), as conv2d does: on CUDA its kernels accumulate
// in float32, and the CPU computes 16-bit tensors in float32 and rounds the result.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace rcm_fsad {
namespace {

template <c10::DeviceType kDevice, c10::DispatchKey kAutocastKey>
at::Tensor deform_conv2d_autocast(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocastKey);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rcm_fsad::deform_conv2d", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const std::optional<at::Tensor>&,
                                               const std::optional<at::Tensor>&, at::IntArrayRef,
                                               at::IntArrayRef, at::IntArrayRef)>();
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(kDevice);
  const auto cast = [dtype](const auto& t) { return at::autocast::cached_cast(dtype, t, kDevice); };
  return op.call(cast(input), cast(offset), cast(weight), cast(mask), cast(bias), stride, padding,
                 dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(rcm_fsad, AutocastCPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(rcm_fsad, AutocastCUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}

}  // namespace rcm_fsad
