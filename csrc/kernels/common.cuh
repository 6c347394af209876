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

namespace rcm_fsad {
namespace kernels {

template <typename T>
RCM_HD T min_of(T a, T b) { return a < b ? a : b; }

template <typename T>
RCM_HD T max_of(T a, T b) { return a < b ? b : a; }

}  // namespace kernels
}  // namespace rcm_fsad
