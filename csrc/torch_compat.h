// What differs between the torch versions this library builds against, 2.4 and later (SPEC section 3):
// each newer API it uses, with the way of the versions before it. Extensions compile as C++17 before
// torch 2.12 and as C++20 from it, so this file (like every host source) keeps to C++17.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <string_view>

#define RCM_FSAD_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace rcm_fsad {

// a x b with float32 sums handed back as float32, for 16-bit a and b: mm with out_dtype from torch 2.8;
// before it, mm of the operands converted to float32 (16-bit values and their products are exact in
// float32, so only the order of the sums may differ), copies that the callers' memory budgets do not
// count.
inline at::Tensor mm_in_float(const at::Tensor& a, const at::Tensor& b) {
#if RCM_FSAD_TORCH_AT_LEAST(2, 8)
  return at::mm(a, b, at::kFloat);
#else
  return at::mm(a.to(at::kFloat), b.to(at::kFloat));
#endif
}

// Whether float32 matmuls on CUDA may use TF32, as torch's own cuBLAS calls decide: the precision set
// by torch.backends.cuda.matmul.allow_tf32 or (from torch 2.9) fp32_precision. From 2.9 it is read
// through the newer API, because allowTF32CuBLAS raises there where both APIs were used.
inline bool cuda_matmul_tf32_allowed() {
#if RCM_FSAD_TORCH_AT_LEAST(2, 10)
  return at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
         at::Float32Precision::TF32;
#elif RCM_FSAD_TORCH_AT_LEAST(2, 9)
  return at::globalContext().float32Precision("cuda", "matmul") == "tf32";
#else
  return at::globalContext().allowTF32CuBLAS();
#endif
}

// Whether an error is the CUDA runtime's (C10_CUDA_CHECK's): a c10::AcceleratorError from torch 2.8;
// before it a plain c10::Error whose message starts "CUDA error: " and then names no library status
// (cuBLAS's checks also start so, "CUDA error: CUBLAS_STATUS_...", and are no runtime error).
inline bool is_cuda_error(const c10::Error& error) {
#if RCM_FSAD_TORCH_AT_LEAST(2, 8)
  return dynamic_cast<const c10::AcceleratorError*>(&error) != nullptr;
#else
  constexpr std::string_view kPrefix = "CUDA error: ";
  const std::string_view text = error.what_without_backtrace();
  if (text.substr(0, kPrefix.size()) != kPrefix) return false;
  const std::string_view rest = text.substr(kPrefix.size());
  return rest.substr(0, rest.find(' ')).find("_STATUS_") == std::string_view::npos;
#endif
}

}  // namespace rcm_fsad
