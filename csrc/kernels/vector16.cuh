// 16-byte vectors of elements, for vectorised global loads and stores (one instruction for 8
// 16-bit or 4 32-bit elements) where channel runs and base pointers allow them.
// Torch-free (see common.cuh).
#pragma once

#include "common.cuh"

#if !defined(__CUDA_ARCH__)
#include <cstring>
#endif

namespace rcm_fsad {
namespace kernels {

// 16 bytes of consecutive elements.
template <typename T>
struct alignas(16) Vector16 {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// 16 bytes at p, read as elements of type T (p: 16-byte aligned).
template <typename T>
__device__ __forceinline__ Vector16<T> load16(const void* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const Vector16<T>*>(p);
#else
  Vector16<T> r;
  std::memcpy(r.v, p, sizeof r.v);
  return r;
#endif
}

// The 16 bytes at p where `use`, zeros otherwise. The load always happens, from `fallback` (any
// 16-byte aligned address that may be read) when !use: a load and a select, not a branch, so that
// the compiler may issue several such loads back to back.
template <typename T>
__device__ __forceinline__ Vector16<T> load16_or_zeros(const void* p, const void* fallback, bool use) {
  const Vector16<uint32_t> bits = load16<uint32_t>(use ? p : fallback);
  Vector16<uint32_t> kept;
  RCM_UNROLL
  for (int j = 0; j < 4; ++j) kept.v[j] = use ? bits.v[j] : 0u;
  return load16<T>(&kept);
}

template <typename T>
__device__ __forceinline__ void store16(T* p, const Vector16<T>& x) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<Vector16<T>*>(p) = x;
#else
  std::memcpy(p, x.v, sizeof x.v);
#endif
}

// v += weight * x, in acc_t: one corner's share of a sample of 16 bytes of channels.
template <typename acc_t, typename T>
__device__ __forceinline__ void add_weighted(acc_t (&v)[Vector16<T>::kSize], acc_t weight, const Vector16<T>& x) {
  RCM_UNROLL
  for (int j = 0; j < Vector16<T>::kSize; ++j) v[j] += weight * static_cast<acc_t>(x.v[j]);
}

template <typename T>
RCM_HD bool aligned16(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace kernels
}  // namespace rcm_fsad
