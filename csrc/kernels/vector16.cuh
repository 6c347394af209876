// 16-byte vectors of elements, for vectorised global loads and stores (one instruction for 8
// 16-bit or 4 32-bit elements) where channel runs and base pointers allow them.
// Torch-free (see common.cuh).
#pragma once

#include "common.cuh"

#include <type_traits>

#if !defined(__CUDA_ARCH__)
#include <cstring>
#endif

// A vector access must be aligned to its size: the GPU faults at any other address. The host branches
// below copy with memcpy, which never would, so the CPU emulator (tests/kernels/cuda_emulation.h)
// defines this check to fail there as the GPU would; elsewhere it checks nothing.
#ifndef RCM_CHECK_VECTOR_ALIGNMENT
#define RCM_CHECK_VECTOR_ALIGNMENT(p, bytes, what)
#endif

// Vector atomics (atomicAdd on float4: each element added atomically on its own, one instruction for
// four): CUDA has them from sm_90; the CPU emulator models them and defines this to 1.
#ifndef RCM_FLOAT4_ATOMICS
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define RCM_FLOAT4_ATOMICS 1
#else
#define RCM_FLOAT4_ATOMICS 0
#endif
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
  RCM_CHECK_VECTOR_ALIGNMENT(p, sizeof(Vector16<T>), "load16");
  Vector16<T> r;
  std::memcpy(r.v, p, sizeof r.v);
  return r;
#endif
}

// The 16 bytes at p where `use`, zeros otherwise, without reading p then (it may be any address).
// Under nvcc one predicated load after zeroing its registers (ld.global.nc: the caller's data is
// read-only while the kernel runs), not a branch: the compiler may issue many such loads back to
// back, ahead of the instructions that wait for them.
template <typename T>
__device__ __forceinline__ Vector16<T> load16_if(const void* p, bool use) {
  Vector16<uint32_t> bits;
#if defined(__CUDA_ARCH__)
  asm("{\n"
      "  .reg .pred p;\n"
      "  setp.ne.b32 p, %5, 0;\n"
      "  mov.b32 %0, 0;\n"
      "  mov.b32 %1, 0;\n"
      "  mov.b32 %2, 0;\n"
      "  mov.b32 %3, 0;\n"
      "  @p ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      "}\n"
      : "=r"(bits.v[0]), "=r"(bits.v[1]), "=r"(bits.v[2]), "=r"(bits.v[3])
      : "l"(p), "r"(static_cast<int>(use)));
#else
  bits = use ? load16<uint32_t>(p) : Vector16<uint32_t>{};
#endif
  return load16<T>(&bits);
}

// The 16 bytes at p, a global address that is read-only while the kernel runs: under nvcc one
// ld.global.nc, with no zeroing of its registers first (load16_if's), for loads that always happen.
template <typename T>
__device__ __forceinline__ Vector16<T> load16_global_nc(const void* p) {
#if defined(__CUDA_ARCH__)
  Vector16<uint32_t> bits;
  asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];\n"
      : "=r"(bits.v[0]), "=r"(bits.v[1]), "=r"(bits.v[2]), "=r"(bits.v[3])
      : "l"(p));
  return load16<T>(&bits);
#else
  return load16<T>(p);
#endif
}

template <typename T>
__device__ __forceinline__ void store16(T* p, const Vector16<T>& x) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<Vector16<T>*>(p) = x;
#else
  RCM_CHECK_VECTOR_ALIGNMENT(p, sizeof x, "store16");
  std::memcpy(p, x.v, sizeof x.v);
#endif
}

// store16 to global memory as one st.global.v4 instruction, spelled out. Assigned as a whole, im2col's
// vector of 16-bit elements went out as four st.global.v2.u16, and its vector of floats as four
// st.global.f32 in the first unrolled iteration (session 13's PTX): partial-sector writes, four times
// the store instructions. Only for stores the kernel never reads back: without a memory clobber the
// compiler does not know the asm writes memory, and may move other accesses across it.
template <typename T>
__device__ __forceinline__ void store16_global(T* p, const Vector16<T>& x) {
#if defined(__CUDA_ARCH__)
  uint32_t w[4];
  memcpy(w, &x, sizeof w);
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(w[0]), "r"(w[1]), "r"(w[2]), "r"(w[3]));
#else
  store16(p, x);
#endif
}

// The float whose bits are b.
__device__ __forceinline__ float float_from_bits(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
#endif
}

// kCount consecutive elements, written with one store (store_elements) at an address aligned to
// kCount elements.
template <typename T, int kCount>
struct alignas(kCount * sizeof(T)) Elements {
  T v[kCount];
};

template <typename T, int kCount>
__device__ __forceinline__ void store_elements(T* p, const Elements<T, kCount>& x) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<Elements<T, kCount>*>(p) = x;
#else
  RCM_CHECK_VECTOR_ALIGNMENT(p, sizeof x, "store_elements");
  std::memcpy(p, x.v, sizeof x.v);
#endif
}

// v += weight * x, in acc_t: one corner's share of a sample of 16 bytes of channels.
// kBFloat16: T is bfloat16 (the caller knows; the types differ between torch, the harness and
// ptxas_report), the upper half of a float, so each element is widened by one bit operation on the
// loaded words; converting elements one by one first moves each into a register of its own.
template <bool kBFloat16 = false, typename acc_t, typename T>
__device__ __forceinline__ void add_weighted(acc_t (&v)[Vector16<T>::kSize], acc_t weight, const Vector16<T>& x) {
  if constexpr (kBFloat16) {
    static_assert(sizeof(T) == 2 && std::is_same_v<acc_t, float>, "bfloat16 blends in float");
    const Vector16<uint32_t> words = load16<uint32_t>(&x);
    RCM_UNROLL
    for (int j = 0; j < 4; ++j) {
      v[2 * j] += weight * float_from_bits(words.v[j] << 16);
      v[2 * j + 1] += weight * float_from_bits(words.v[j] & 0xffff0000u);
    }
  } else {
    RCM_UNROLL
    for (int j = 0; j < Vector16<T>::kSize; ++j) v[j] += weight * static_cast<acc_t>(x.v[j]);
  }
}

// p[j] += v[j] for kCount consecutive elements, each add atomic (no order among them, as for any
// scatter): in float, one float4 atomic per four elements where RCM_FLOAT4_ATOMICS (p 16-byte
// aligned), one atomic per element otherwise.
template <int kCount, typename acc_t>
__device__ __forceinline__ void atomic_add_elements(acc_t* p, const acc_t (&v)[kCount]) {
  if constexpr (RCM_FLOAT4_ATOMICS && std::is_same_v<acc_t, float> && kCount % 4 == 0) {
    RCM_UNROLL
    for (int j = 0; j < kCount; j += 4) {
      atomicAdd(reinterpret_cast<float4*>(p + j), make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]));
    }
  } else {
    RCM_UNROLL
    for (int j = 0; j < kCount; ++j) atomicAdd(p + j, v[j]);
  }
}

template <typename T>
RCM_HD bool aligned16(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace kernels
}  // namespace rcm_fsad
