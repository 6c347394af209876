// Autocast. On CUDA, unlike torchvision, which upcasts deform_conv2d to float32, the op runs in the
// autocast dtype (float16/bfloat16), as conv2d does, and its kernels accumulate in float32. On the
// CPU it runs in bfloat16 where a bfloat16 forward multiplies in bfloat16 (cpu_bfloat16_gemms; a layer
// too small for those GEMMs computes in float32 inside and returns bfloat16 all the same, one dtype for
// all layers as conv2d's), and otherwise in float32, where the kernels compute 16-bit tensors anyway:
// casting to 16 bits there would only add conversions and rounding. Either way every floating-point
// argument gets the same dtype, so a layer whose offsets come from an autocast conv2d works under autocast.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "cpu/cpu_capability.h"
#include "deform_conv2d.h"

namespace rcm_fsad {
namespace {

// The dtype the op runs in under autocast on kDevice.
template <c10::DeviceType kDevice>
at::ScalarType autocast_run_dtype() {
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(kDevice);
  if constexpr (kDevice == c10::DeviceType::CPU) {
    return dtype == at::kBFloat16 && cpu_bfloat16_gemms() ? dtype : at::kFloat;
  }
  return dtype;
}

template <c10::DeviceType kDevice, c10::DispatchKey kAutocastKey>
at::Tensor deform_conv2d_autocast(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocastKey);
  const at::ScalarType dtype = autocast_run_dtype<kDevice>();
  const auto cast = [dtype](const auto& t) { return at::autocast::cached_cast(dtype, t, kDevice); };
  return rcm_fsad::deform_conv2d(cast(input), cast(offset), cast(weight), cast(mask), cast(bias), stride,
                                 padding, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(rcm_fsad, AutocastCPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(rcm_fsad, AutocastCUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}

}  // namespace rcm_fsad
