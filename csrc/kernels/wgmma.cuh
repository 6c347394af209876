// A warpgroup's asynchronous tensor-core multiply-accumulate (PTX wgmma.mma_async, sm_90a): four
// warps (a warpgroup, threads 128 w .. 128 w + 127 of a block) together compute d += A x B on a 64 x N
// tile of float sums, 16 deep for f16 and bf16 operands, 8 deep for TF32: A from registers, B from
// shared memory through a matrix descriptor. The call returns at once; the tensor cores read A's
// registers and B's shared memory, and write d, until a wgmma.wait_group completes the group the call
// was committed in. Until then none of them may be touched (wgmma_fence_operand keeps the compiler
// from reusing their registers); wgmma_fence() orders the registers' earlier writes (A's fragments, a
// reset of d) before the calls after it, and wgmma_fence_shared_writes() a thread's earlier writes to
// B's shared memory (stores, landed cp.async copies: the generic proxy) before the tensor cores' reads
// (the async proxy).
//
// Fragments, for lane = 4 q + t of warp w of the warpgroup (PTX ISA, "Matrix Fragments for
// wgmma.mma_async.m64nNk16" and "m64nNk8"), in 32-bit words of two 16-bit elements (the lower k in the
// low half) or of one TF32 element: the warp's rows are 16 w .. 16 w + 15 of the 64, laid out as
// mma.m16n8k16's (mma.m16n8k8's) A and D (mma_sync.cuh):
//   a[0] = word t of row q, a[1] = word t of row q + 8, a[2] and a[3] the same of word t + 4;
//   d[4 j .. 4 j + 3] = D[q][8 j + 2 t], D[q][8 j + 2 t + 1], D[q + 8][8 j + 2 t], D[q + 8][8 j + 2 t + 1].
// B (k x N) is K-major without swizzle (PTX ISA, "Shared Memory Matrix Layout", canonical layout
// ((8,m),(T,2k)):((1T,SBO),(1,LBO))): core matrices of 8 columns n x 16 bytes (8 16-bit k or 4 TF32
// k, rows 16 bytes apart), the two along k LBO bytes apart, those along n SBO bytes apart
// (wgmma_descriptor); CUTLASS's GmmaDescriptor reads the same fields the same way (its K-major
// INTERLEAVE layout, ((8,n),2):((1,SBO),LBO) in units of 16 bytes).
// Under nvcc (sm_90a, where __CUDA_ARCH_FEAT_SM90_ALL is defined) the instructions; under the CPU
// emulation harness (tests/kernels/cuda_emulation.h) its model of them. The CPU backend does not
// include this header.
#pragma once

#include <cstdint>
#include <type_traits>

#include "mma_sync.cuh"  // Tf32, __half, __nv_bfloat16 and the emulator's operand kinds

#if !defined(__CUDACC__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define RCM_WGMMA_AVAILABLE 1
#endif

namespace rcm_fsad {
namespace kernels {

// The descriptor of B at p (16-byte aligned, in shared memory) with the byte offsets lbo between the
// two core matrices along k and sbo between those along n (both multiples of 16, below 256 KB).
__device__ __forceinline__ uint64_t wgmma_descriptor(const void* p, uint32_t lbo, uint32_t sbo) {
  const uint64_t address = static_cast<uint64_t>(__cvta_generic_to_shared(p));
  return ((address & 0x3ffffu) >> 4) | (static_cast<uint64_t>((lbo & 0x3ffffu) >> 4) << 16) |
         (static_cast<uint64_t>((sbo & 0x3ffffu) >> 4) << 32);
}

#if defined(RCM_WGMMA_AVAILABLE)
#if defined(__CUDACC__)
#define RCM_WGMMA_D_64 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define RCM_WGMMA_OPERANDS_64 "{%32, %33, %34, %35}, %36, p, 1, 1"
#define RCM_WGMMA_SCALE_D_64 "setp.ne.b32 p, %37, 0;\n"
#define RCM_WGMMA_D_128 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define RCM_WGMMA_OPERANDS_128 "{%64, %65, %66, %67}, %68, p, 1, 1"
#define RCM_WGMMA_SCALE_D_128 "setp.ne.b32 p, %69, 0;\n"
#define RCM_WGMMA_D_256 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define RCM_WGMMA_OPERANDS_256 "{%128, %129, %130, %131}, %132, p, 1, 1"
#define RCM_WGMMA_SCALE_D_256 "setp.ne.b32 p, %133, 0;\n"
#define RCM_WGMMA_D8(i) \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define RCM_WGMMA_D32(i) RCM_WGMMA_D8(i), RCM_WGMMA_D8(i + 8), RCM_WGMMA_D8(i + 16), RCM_WGMMA_D8(i + 24)
#define RCM_WGMMA_IN "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1)
// One wgmma.mma_async of N columns, K deep ("k16" or "k8"), in type TYPE ("f16", "bf16" or "tf32"),
// accumulating (scale-d true), A and B unscaled; TRANS_B is ", 0" (B K-major) for the 16-bit types,
// empty for TF32, which takes no transpose operand (only K-major).
#define RCM_WGMMA(N, K, TYPE, TRANS_B, ...)                                                                      \
  asm volatile("{\n.reg .pred p;\n" RCM_WGMMA_SCALE_D_##N "wgmma.mma_async.sync.aligned.m64n" #N K ".f32." TYPE \
               "." TYPE " {" RCM_WGMMA_D_##N "}, " RCM_WGMMA_OPERANDS_##N TRANS_B ";\n}\n"                   \
               : __VA_ARGS__                                                                             \
               : RCM_WGMMA_IN)
// RCM_WGMMA for input_t, the caller's input type.
#define RCM_WGMMA_OF_INPUT(N, ...)                                 \
  if constexpr (std::is_same_v<input_t, __nv_bfloat16>) {          \
    RCM_WGMMA(N, "k16", "bf16", ", 0", __VA_ARGS__);               \
  } else if constexpr (std::is_same_v<input_t, __half>) {          \
    RCM_WGMMA(N, "k16", "f16", ", 0", __VA_ARGS__);                \
  } else {                                                         \
    RCM_WGMMA(N, "k8", "tf32", "", __VA_ARGS__);                   \
  }
#endif

// Orders the calling thread's earlier register accesses before the wgmma.mma_async calls after it.
__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDACC__)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
  ::emu::wgmma_fence();
#endif
}

// Closes the calls since the last commit into a group.
__device__ __forceinline__ void wgmma_commit_group() {
#if defined(__CUDACC__)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
  ::emu::wgmma_commit_group();
#endif
}

// Waits until at most kPending committed groups are unfinished.
template <int kPending>
__device__ __forceinline__ void wgmma_wait_group() {
#if defined(__CUDACC__)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#else
  ::emu::wgmma_wait_group(kPending);
#endif
}

// Orders the calling thread's earlier writes to shared memory before the tensor cores' reads of it
// in the wgmma calls after a barrier that follows (fence.proxy.async: the calls read through the async
// proxy, which the generic proxy's writes, cp.async's included, do not reach without it).
__device__ __forceinline__ void wgmma_fence_shared_writes() {
#if defined(__CUDACC__)
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
  ::emu::fence_proxy_async_shared();
#endif
}

// Keeps the compiler from moving accesses to x across this point, and x's register from being reused
// before it: the accumulators of a wgmma in flight are written behind the compiler's back, and its A
// registers read (so they must stay live until its wait).
__device__ __forceinline__ void wgmma_fence_operand(float& x) {
#if defined(__CUDACC__)
  asm volatile("" : "+f"(x)::"memory");
#else
  (void)x;
#endif
}
__device__ __forceinline__ void wgmma_fence_operand(uint32_t& x) {
#if defined(__CUDACC__)
  asm volatile("" : "+r"(x)::"memory");
#else
  (void)x;
#endif
}

// d += A x B for the warpgroup (every thread of its four warps calls it, with its own fragments and
// the same descriptor): kN columns (64, 128 or 256); input_t __half or __nv_bfloat16 (16 deep) or Tf32
// (8 deep, operands already rounded to TF32: the tensor cores ignore their low 13 bits).
template <int kN, typename input_t>
__device__ __forceinline__ void wgmma_m64(float (&d)[kN / 2], const uint32_t (&a)[4], uint64_t desc) {
  static_assert(std::is_same_v<input_t, __half> || std::is_same_v<input_t, __nv_bfloat16> ||
                    std::is_same_v<input_t, Tf32>,
                "input_t: __half, __nv_bfloat16 or Tf32");
  static_assert(kN == 64 || kN == 128 || kN == 256, "kN: 64, 128 or 256");
#if defined(__CUDACC__)
  if constexpr (kN == 64) {
    RCM_WGMMA_OF_INPUT(64, RCM_WGMMA_D32(0))
  } else if constexpr (kN == 128) {
    RCM_WGMMA_OF_INPUT(128, RCM_WGMMA_D32(0), RCM_WGMMA_D32(32))
  } else {
    RCM_WGMMA_OF_INPUT(256, RCM_WGMMA_D32(0), RCM_WGMMA_D32(32), RCM_WGMMA_D32(64), RCM_WGMMA_D32(96))
  }
#else
  ::emu::wgmma_mma_async(emulated_operand<input_t>(), kN, d, a, desc);
#endif
}
#endif  // RCM_WGMMA_AVAILABLE

}  // namespace kernels
}  // namespace rcm_fsad
