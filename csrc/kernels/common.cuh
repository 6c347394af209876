// Portability macros for the torch-free kernel headers.
//
// Everything under csrc/kernels/ compiles three ways: by nvcc (device code), by the host C++
// compiler (the CPU backend calls the same per-element functions) and by the CPU emulation
// harness. Headers here must not include torch or CUDA runtime headers.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RCM_HD __host__ __device__ __forceinline__
#else
#define RCM_HD inline
#endif

// `#pragma unroll` for nvcc (loops over register arrays must unroll, or the arrays go to local
// memory); nothing for host compilers, which would warn about an unknown pragma.
// RCM_NO_UNROLL: `#pragma unroll 1`, for loops whose unrolled iterations would cost registers.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define RCM_UNROLL _Pragma("unroll")
#define RCM_NO_UNROLL _Pragma("unroll 1")
#else
#define RCM_UNROLL
#define RCM_NO_UNROLL
#endif

// Dynamic shared memory: kernel headers declare it with RCM_DYNAMIC_SHARED(type, name) rather than
// `extern __shared__`, which the emulation harness (tests/kernels/cuda_emulation.h) cannot model;
// the harness defines its own version of the macro.
#if (defined(__CUDACC__) || defined(__HIPCC__)) && !defined(RCM_DYNAMIC_SHARED)
#define RCM_DYNAMIC_SHARED(type, name)                                          \
  extern __shared__ __align__(128) unsigned char rcm_dynamic_shared_storage_[]; \
  type* name = reinterpret_cast<type*>(rcm_dynamic_shared_storage_)
#endif

namespace rcm_fsad {
namespace kernels {

template <typename T>
RCM_HD T min_of(T a, T b) { return a < b ? a : b; }

template <typename T>
RCM_HD T max_of(T a, T b) { return a < b ? b : a; }

}  // namespace kernels
}  // namespace rcm_fsad
