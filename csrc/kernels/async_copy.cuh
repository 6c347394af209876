// Asynchronous 16-byte copies from global to shared memory (cp.async, sm_80+): a thread issues
// copies, closes them into a group, and later waits for all but its most recent groups, so that
// the loads of one reduction step are in flight while the block computes the previous one.
// Under nvcc these are the PTX instructions; under the CPU emulation harness
// (tests/kernels/cuda_emulation.h) CUDA's pipeline primitives, which the harness models as
// copies deferred until the wait (destinations poisoned in between). The CPU backend does not
// include this header.
#pragma once

#include "common.cuh"

namespace rcm_fsad {
namespace kernels {

#if defined(__CUDACC__)
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
// 16 bytes from src to dst (both 16-byte aligned), or 16 zero bytes to dst when !fill (src is then
// not read, but must still be a global address). Cached in L1 (.ca): the corners of neighbouring
// output pixels are mostly the same input pixels.
__device__ __forceinline__ void copy16_async(void* shared_dst, const void* global_src, bool fill) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global_src), "r"(fill ? 16 : 0)
               : "memory");
}

// Closes the copies issued since the last commit into a group (possibly empty).
__device__ __forceinline__ void commit_async_copies() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Returns when at most kPending of this thread's committed groups, its most recent, are in flight.
// Other threads see the copied data only after a barrier that follows their issuer's wait.
template <int kPending>
__device__ __forceinline__ void wait_async_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}
#endif  // sm_80+
#else   // the emulation harness
inline void copy16_async(void* shared_dst, const void* global_src, bool fill) {
  __pipeline_memcpy_async(shared_dst, global_src, 16, fill ? 0 : 16);
}
inline void commit_async_copies() { __pipeline_commit(); }
template <int kPending>
inline void wait_async_copies() {
  __pipeline_wait_prior(kPending);
}
#endif

}  // namespace kernels
}  // namespace rcm_fsad
