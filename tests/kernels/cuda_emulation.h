// CPU emulation of the CUDA execution model, so that the torch-free kernel headers under
// csrc/kernels/ run (and are tested, under AddressSanitizer, UBSan and ThreadSanitizer) on machines
// without a GPU. Include this header BEFORE any kernel header; compile as host C++20 (g++ >= 12).
//
//   #include "cuda_emulation.h"
//   #include "kernels/deform_conv2d_kernels.cuh"
//   emu::launch(emu::Mode::AllBlocks, dim3(4), dim3(256), /*shared_bytes=*/0,
//               rcm_fsad::kernels::deform_col2im_kernel<float, float, int32_t, 32>, g, input, ...);
//
// What it provides
//   * the qualifiers __global__, __device__, __host__, __forceinline__, __noinline__,
//     __launch_bounds__(...), __align__(n) and __constant__; static __shared__ is a compile error
//     (see "Limits");
//   * threadIdx, blockIdx (uint3), blockDim, gridDim (dim3) and warpSize: per OS thread
//     (thread_local), read-only;
//   * __syncthreads(), __syncthreads_count/and/or(pred): a real barrier of the thread block. A
//     barrier not reached by every thread of the block is reported as "divergent __syncthreads"
//     and aborts the process: a thread that waits while others of its block have exited, a thread
//     that exits while others wait, or threads waiting at two different __syncthreads() calls;
//   * warp collectives __shfl_sync, __shfl_up_sync, __shfl_down_sync, __shfl_xor_sync (with the
//     width argument), __ballot_sync, __any_sync, __all_sync and __syncwarp, through a per-warp
//     exchange: every lane named in the mask must call the same collective with the same mask.
//     Reported as errors (abort): a lane of the mask that has exited or calls something else, a
//     calling lane missing from the mask, a mask naming lanes the warp does not have, and a shuffle
//     reading a lane outside the mask (its value is undefined on the GPU). Of the warp collectives
//     (these, the WMMA *_sync calls and mma.sync) only __syncwarp orders memory between the lanes,
//     as on the GPU, where only bar.warp.sync promises memory ordering: for ThreadSanitizer the
//     others are no synchronisation at all, so a lane that reads shared memory another lane wrote
//     (or writes what another lane read) needs __syncwarp or __syncthreads in between even when a
//     shuffle or an MMA separates them (a data race otherwise);
//   * atomics through std::atomic_ref with relaxed ordering, as on the GPU (so they do not hide
//     races from ThreadSanitizer): atomicAdd (int, unsigned, unsigned long long, float, double,
//     __half, __nv_bfloat16, and sm_90's float4: each element on its own, at a 16-byte aligned address
//     or a fault as on the GPU; RCM_FLOAT4_ATOMICS is defined to 1 so that the kernels take them),
//     atomicSub, atomicExch, atomicCAS, atomicMin, atomicMax;
//   * dynamic shared memory through RCM_DYNAMIC_SHARED(type, name), which declares `type* name`
//     pointing at the block's dynamic shared memory (the shared_bytes of the launch). The same
//     macro works under nvcc (see the __CUDACC__ branch below): kernel headers use it rather than
//     `extern __shared__` or static `__shared__`, which this harness cannot emulate. Each block gets
//     its own heap buffer of exactly shared_bytes, 128-byte aligned (as the macro declares it under nvcc),
//     filled with 0xFF bytes (NaN for float/double) so reads of never-written shared memory show,
//     and AddressSanitizer catches overruns;
//   * host 16-bit float types __half and __nv_bfloat16: 16-bit storage, round-to-nearest-even
//     conversion from float and exact conversion to float, both implicit (like c10::Half), and
//     __float2half/__half2float/__float2bfloat16/__bfloat162float. Arithmetic goes through float;
//   * the WMMA fragment API (nvcuda::wmma) for the tensor-core shapes the kernels use, as whole-warp
//     collectives (details and limits below);
//   * asynchronous global -> shared copies (cp.async) through the pipeline primitives of
//     <cuda_pipeline_primitives.h>, per thread as on the GPU: __pipeline_memcpy_async(dst_shared,
//     src_global, size_and_align, zfill = 0) queues a copy in the thread's open batch,
//     __pipeline_commit() closes the batch as a group (possibly empty), __pipeline_wait_prior(N)
//     completes every committed group but the N most recent (copies not yet committed are not waited
//     for). The copy is deferred: at the call the source is read (the first size_and_align - zfill
//     bytes; sources are global memory, which a kernel does not write while copying from it) and the
//     destination is filled with 0xFF bytes (NaN, like never-written shared memory), so a read before
//     the wait shows; the data, then zfill zero bytes, land at the wait that covers the copy, written
//     by the issuing thread, so that for ThreadSanitizer the write happens at the wait: a thread of the
//     block may read it after a __syncthreads that the issuer reaches after its wait, not before.
//     Errors: size_and_align other than 4, 8 or 16, dst or src not aligned to it, zfill greater than
//     it, a destination not inside the block's dynamic shared memory, a source read inside it, and a
//     thread exiting with copies that no wait completed (empty groups left at exit are fine). Kernel
//     headers include <cuda_pipeline_primitives.h> only under __CUDACC__, as they do <mma.h>;
//   * mma.sync through emu::mma_m16n8_sync (the m16n8k16 and TF32 m16n8k8 shapes with float
//     accumulators), which csrc/kernels/mma_sync.cuh calls in place of the PTX instruction: a
//     whole-warp collective that multiplies the fragments of every lane as the PTX ISA lays them out;
//   * sm_90a's wgmma (m64nNk16 f16/bf16 and m64nNk8 TF32 into float, A in registers, B K-major and
//     unswizzled in shared memory by its descriptor) through emu::wgmma_mma_async, emu::wgmma_fence,
//     emu::wgmma_commit_group and emu::wgmma_wait_group, which csrc/kernels/wgmma.cuh calls in place
//     of the instructions: a call is a whole-warp collective that takes the A rows its lane's
//     accumulators need; the multiply happens at the wait that completes its group, reading B from
//     shared memory then (so that B overwritten before the wait, or the accumulators read before it,
//     show), and checking there that the caller's A registers (the array it passed) still hold what
//     they held at the call. A call also fails without a wgmma.fence by its thread since that
//     thread's last wgmma.commit_group (stricter than the PTX ISA, which asks for one only where the
//     calls' registers were written since), or when a byte of its B was written by a cp.async that
//     the writing thread has not fenced since for the async proxy, through which the tensor cores
//     read (fence.proxy.async, emu::fence_proxy_async_shared, after the copy's wait; plain stores to
//     shared memory are not tracked). When a block has finished, the threads of each warpgroup (4
//     warps) must have executed the same wgmma instructions (fences, calls with their shapes and
//     descriptors, commits, waits) in the same order, and a warpgroup that is not whole none. Not
//     modelled: swizzled layouts. __cvta_generic_to_shared gives a pointer's offset in the block's
//     dynamic shared memory (the shared window of the descriptors);
//   * emu::launch(mode, grid, block, shared_bytes, kernel, args...): every GPU thread of a block
//     runs on its own OS thread (a pool of threads, reused between launches), so ThreadSanitizer
//     sees races between the threads of a block.
//       Mode::BlockByBlock runs the blocks one after the other (all threads of one block at a time);
//       Mode::AllBlocks runs the threads of every block at once, to expose races BETWEEN blocks
//       (a non-atomic scatter).
//     The launch returns when every thread has finished (like a launch followed by a device
//     synchronise): everything the kernel wrote happens-before the code after emu::launch.
//
// Limits (what it does NOT emulate)
//   * no inline PTX (asm) beyond the models above, no TMA / mbarrier (so no __pipeline_arrive_on, cuda::memcpy_async or
//     cuda::pipeline), no cooperative groups, no clusters, no texture or surface objects, no
//     __activemask(), no __nanosleep, no clock(); of cp.async only the pipeline primitives above:
//     its cache hints (cp.async.ca / .cg) and its timing are not modelled;
//   * WMMA (nvcuda::wmma) models only what the kernels use: fragments of shape 16x16x16 for __half
//     and __nv_bfloat16 and 16x16x8 for precision::tf32, float accumulators, row/col-major
//     load_matrix_sync, store_matrix_sync, fill_fragment, mma_sync and __float_to_tf32. Every lane
//     holds the WHOLE tile (num_elements = rows x cols, x[] row-major), so code that relies on the
//     GPU's unspecified lane-to-element mapping is not supported (element-wise loops over x[] are).
//     The *_sync calls are whole-warp collectives (a lane missing is a divergence error; they order
//     no memory, see above) and check what the GPU requires: 256-bit aligned pointers, ldm a multiple
//     of 16 bytes, and the same pointer and ldm on every lane. A store writes each element from one
//     lane only, the lane that holds it on sm_80+ tensor cores (emu_detail::accumulator_lane), and a
//     load of an accumulator reads, for ThreadSanitizer, only the elements the lane holds: reading
//     what other lanes stored needs __syncwarp, as on the GPU. mma_sync multiplies exactly (products
//     of 16-bit or tf32 values are exact in float) and accumulates in float in k order; tf32 operands
//     lose their low 13 mantissa bits, as the hardware ignores them;
//   * no lockstep execution: lanes of a warp run as independent threads and only wait for each other
//     in the warp collectives above (as with independent thread scheduling, sm_70+). Code that relies
//     on implicit warp-synchronous execution (reading another lane's shared-memory write without
//     __syncwarp) is a data race here, which ThreadSanitizer reports: a feature;
//   * memory is the host's: no distinction between global, shared, constant and local memory beyond
//     the lifetime rules above, no memory-model effects beyond the C++ ones (a plain store is seen by
//     other threads only through the synchronisation above), no alignment faults (WMMA and cp.async
//     check the alignment they require, see above, and so do the vector loads and stores of
//     csrc/kernels/vector16.cuh, through its RCM_CHECK_VECTOR_ALIGNMENT, and the float4 atomicAdd;
//     that one is global-memory only on the GPU, which is not checked here);
//   * no static __shared__ (it does not compile here: a function-local static would be one object
//     for all blocks, and would start with what the previous block left) and no `extern __shared__`:
//     kernels use RCM_DYNAMIC_SHARED;
//   * resource limits are checked loosely: at most 1024 threads per block, 227 KiB of dynamic
//     shared memory; registers, occupancy and timing are not modelled (tools/ptxas_report.py covers
//     registers and spills);
//   * a hang (a lane waiting for a partner that never comes, e.g. waiting at __syncthreads while its
//     warp mates wait in a shuffle) is reported after EMU_WATCHDOG_SECONDS (default 60) of waiting;
//   * Linux only (POSIX threads, futex); at most EMU_MAX_THREADS (default 4096) threads in one
//     AllBlocks launch;
//   * a __syncwarp with a partial mask (not the whole warp) goes through a per-warp mutex, which
//     orders disjoint subsets of one warp for ThreadSanitizer: a race between two such subsets can be
//     missed.
//
// Cost. A GPU thread is an OS thread, so every __syncthreads and every warp collective is a round of
// context switches (a few microseconds per lane, several times that under ThreadSanitizer, whose
// cost also grows with the number of threads the process has): test with small shapes and grids,
// and let grid-stride loops cover the work.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)

// Under nvcc only the shared-memory macro is needed; the same definition belongs in
// csrc/kernels/common.cuh so that kernel headers can use it.
#ifndef RCM_DYNAMIC_SHARED
#define RCM_DYNAMIC_SHARED(type, name)                                          \
  extern __shared__ __align__(128) unsigned char rcm_dynamic_shared_storage_[]; \
  type* name = reinterpret_cast<type*>(rcm_dynamic_shared_storage_)
#endif

#else  // host emulation

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <ctime>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <source_location>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Qualifiers.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))  // unlike alignas, allowed after `static`
#define __constant__

// Static `__shared__ T name[N];` cannot be emulated faithfully (a function-local static would be
// one object for every block, and would start each block with what the previous one left instead
// of uninitialised), so it does not compile here: kernels use RCM_DYNAMIC_SHARED, which is per block
// and starts poisoned.
#define __shared__ \
  static_assert(false, "static __shared__ is not emulated: declare the block's shared memory with RCM_DYNAMIC_SHARED");

#ifndef RCM_DYNAMIC_SHARED
#define RCM_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::emu::detail::dynamic_shared_memory())
#endif

// ---------------------------------------------------------------------------------------------
// Vector types of the built-in variables.
struct uint3 {
  unsigned int x, y, z;
};

struct alignas(16) float4 {
  float x, y, z, w;
};

inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

// ---------------------------------------------------------------------------------------------
// Host 16-bit floating-point types.
namespace emu {
namespace detail {

inline std::uint16_t float_to_half_bits(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t mag = u & 0x7fffffffu;
  if (mag >= 0x7f800000u) {  // infinity, or NaN (quiet, keeping the top payload bits)
    return static_cast<std::uint16_t>(sign | 0x7c00u | (mag > 0x7f800000u ? 0x0200u | (mag >> 13) : 0u));
  }
  if (mag >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds past 65504
  if (mag < 0x38800000u) {  // below the smallest normal half, 2^-14: a subnormal half or zero
    if (mag <= 0x33000000u) return static_cast<std::uint16_t>(sign);  // <= 2^-25: ties to even zero
    const std::uint32_t exponent = mag >> 23;
    const std::uint32_t mantissa = (mag & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - exponent;  // value / 2^-24 = mantissa >> shift
    std::uint32_t q = mantissa >> shift;
    const std::uint32_t rest = mantissa & ((1u << shift) - 1u);
    const std::uint32_t half_way = 1u << (shift - 1u);
    if (rest > half_way || (rest == half_way && (q & 1u))) ++q;
    return static_cast<std::uint16_t>(sign | q);
  }
  std::uint32_t h = (mag - 0x38000000u) >> 13;  // re-bias the exponent (127 -> 15), drop 13 bits
  const std::uint32_t rest = mag & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  const std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline std::uint16_t float_to_bfloat16_bits(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);  // NaN
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float bfloat16_bits_to_float(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

}  // namespace detail
}  // namespace emu

struct __half {
  std::uint16_t __x;
  __half() = default;
  __half(float f) : __x(::emu::detail::float_to_half_bits(f)) {}
  operator float() const { return ::emu::detail::half_bits_to_float(__x); }
};

struct __nv_bfloat16 {
  std::uint16_t __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(::emu::detail::float_to_bfloat16_bits(f)) {}
  operator float() const { return ::emu::detail::bfloat16_bits_to_float(__x); }
};

inline __half __float2half(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return static_cast<float>(b); }

// ---------------------------------------------------------------------------------------------
// The emulator.
namespace emu {

enum class Mode {
  BlockByBlock,  // blocks one after the other; all threads of one block concurrently
  AllBlocks,     // all threads of all blocks concurrently
};

inline const char* mode_name(Mode m) { return m == Mode::BlockByBlock ? "BlockByBlock" : "AllBlocks"; }

// The tensor cores' input types, of mma.sync and wgmma.
enum class MmaOperand { F16, BF16, TF32 };

namespace detail {

inline std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string format(const char* fmt, ...) {
  char buffer[1024];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buffer, sizeof buffer, fmt, args);
  va_end(args);
  return buffer;
}

// An error of the emulated program: print and abort (the test driver expects a non-zero exit).
// Only the first error is reported: a second thread finding one waits for the abort.
[[noreturn]] inline void fatal(const std::string& what) {
  static std::atomic<bool> reported{false};
  if (reported.exchange(true)) {
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  std::fprintf(stderr, "emu: error: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

inline long env_long(const char* name, long fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  return (end != nullptr && *end == '\0' && v > 0) ? v : fallback;
}

inline std::chrono::seconds watchdog() {
  static const std::chrono::seconds s{env_long("EMU_WATCHDOG_SECONDS", 60)};
  return s;
}

struct Site {
  const char* file = "?";
  unsigned line = 0;
  static Site of(const std::source_location& l) { return {l.file_name(), static_cast<unsigned>(l.line())}; }
  bool operator==(const Site& o) const { return line == o.line && std::strcmp(file, o.file) == 0; }
  std::string str() const { return format("%s:%u", file, line); }
};

inline std::string lanes_of(std::uint32_t mask) {
  std::string s = "{";
  for (int i = 0; i < 32; ++i) {
    if (mask & (1u << i)) s += (s.size() > 1 ? "," : "") + std::to_string(i);
  }
  return s + "}";
}

enum class WarpOp { Syncwarp, Shfl, ShflUp, ShflDown, ShflXor, Ballot, Any, All, WmmaLoad, WmmaStore, WmmaMma, MmaSync, Wgmma };

inline const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::Syncwarp: return "__syncwarp";
    case WarpOp::Shfl: return "__shfl_sync";
    case WarpOp::ShflUp: return "__shfl_up_sync";
    case WarpOp::ShflDown: return "__shfl_down_sync";
    case WarpOp::ShflXor: return "__shfl_xor_sync";
    case WarpOp::Ballot: return "__ballot_sync";
    case WarpOp::Any: return "__any_sync";
    case WarpOp::All: return "__all_sync";
    case WarpOp::WmmaLoad: return "wmma::load_matrix_sync";
    case WarpOp::WmmaStore: return "wmma::store_matrix_sync";
    case WarpOp::WmmaMma: return "wmma::mma_sync";
    case WarpOp::MmaSync: return "mma.sync";
    case WarpOp::Wgmma: return "wgmma.mma_async";
  }
  return "?";
}

// Waiting. A thread that must wait sleeps on a 32-bit futex word (raw syscalls: no library state
// shared between unrelated threads, which would give ThreadSanitizer happens-before edges that hide
// races). The ordering that a barrier or a __syncwarp implies comes from the acquire/release atomics
// and the per-warp mutex below, and only from them (see warp_collective and diagnostic_load for what
// ThreadSanitizer is kept from seeing).
inline void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t seen, long nanoseconds) {
  timespec timeout{nanoseconds / 1000000000L, nanoseconds % 1000000000L};
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_PRIVATE, seen, &timeout, nullptr, 0);
}

inline void futex_wake_all(std::atomic<std::uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

// Waits until done() (which must use acquire loads) holds; `epoch` is bumped and woken by whoever
// makes it hold. Yields a few times first (the partner is often just about to arrive: this saves a
// futex sleep and wake, ~25% of the time of a warp-collective-heavy kernel on 2 cores), then sleeps.
// Calls on_hang() after watchdog() seconds.
template <typename Done, typename OnHang>
void wait_until(std::atomic<std::uint32_t>& epoch, Done&& done, OnHang&& on_hang) {
  for (int i = 0; i < 16; ++i) {
    if (done()) return;
    sched_yield();
  }
  const auto deadline = std::chrono::steady_clock::now() + watchdog();
  for (;;) {
    const std::uint32_t seen = epoch.load(std::memory_order_relaxed);
    if (done()) return;
    futex_wait(epoch, seen, 200000000L);
    if (std::chrono::steady_clock::now() > deadline && !done()) on_hang();
  }
}

// One warp collective in progress: the lanes of `mask` deposit their value (under the warp's
// mutex), the last one marks it complete (release), every lane reads what it needs (acquire, no
// lock), and the last reader retires it.
struct WarpCollective {
  WarpCollective(WarpOp o, std::uint32_t m, std::size_t size, Site s) : op(o), mask(m), value_size(size), site(s) {}
  const WarpOp op;
  const std::uint32_t mask;
  const std::size_t value_size;
  const Site site;
  std::uint32_t arrived = 0;  // guarded by the warp's mutex
  std::atomic<bool> complete{false};
  std::atomic<int> readers{0};
  std::array<std::array<unsigned char, 24>, 32> values{};  // as WarpSlot::value
};

// A lane's deposit in a whole-warp collective (the fast path).
struct WarpSlot {
  std::array<unsigned char, 24> value{};  // what a lane passes: up to one mma.sync's operand registers
  WarpOp op = WarpOp::Syncwarp;
  std::size_t size = 0;
  Site site;
};

struct WarpState {
  unsigned index = 0;
  unsigned lanes = 32;                          // lanes that exist (the last warp may be partial)
  std::atomic<std::uint32_t> exited{0};         // lanes whose kernel function has returned

  // Fast path, for collectives whose mask is the whole warp (all the kernels use): a counting
  // barrier, with the deposits double-buffered by phase parity (a lane can only deposit for phase
  // p+2 once every lane has arrived at p+1, i.e. has finished reading phase p).
  std::atomic<std::uint32_t> full_arrived{0};   // lanes arrived at the current phase
  std::atomic<std::uint32_t> full_phase{0};     // completed phases (futex word)
  std::array<std::array<WarpSlot, 32>, 2> slots{};

  // General path, for partial masks: a list of collectives in progress, under a mutex.
  std::mutex m;
  std::atomic<std::uint32_t> epoch{0};          // bumped whenever such a collective completes
  std::atomic<std::uint32_t> slow_waiting{0};   // union of the masks of the unfinished ones
  std::list<WarpCollective> open;

  std::uint32_t existing() const { return lanes >= 32 ? 0xffffffffu : ((1u << lanes) - 1u); }
};

// The block barrier is a counting barrier like the warp fast path: arrive (one atomic add), the last
// thread to arrive completes the phase (release) and wakes the others. What a thread deposits (its
// __syncthreads call site, its predicate) is double-buffered by phase parity: a thread can only
// deposit for phase p+2 once every thread has arrived at p+1, i.e. has finished with phase p.
struct BlockState {
  uint3 index{0, 0, 0};
  unsigned size = 0;
  std::atomic<std::uint32_t> arrived{0};  // threads arrived at the current phase
  std::atomic<std::uint32_t> phase{0};    // completed barriers (futex word)
  std::atomic<std::uint32_t> exited{0};   // threads whose kernel function has returned
  std::array<std::vector<Site>, 2> sites;                 // per thread, by phase parity
  std::array<std::atomic<unsigned>, 2> count{};           // predicates, by phase parity
  std::array<unsigned, 2> result{};                       // predicate count of a completed phase
  std::atomic<const char*> waiting_file{nullptr};         // where the current phase's first arrival waits
  std::atomic<unsigned> waiting_line{0};
  unsigned char* shared = nullptr;
  std::size_t shared_bytes = 0;
  // Per byte of shared memory: 1 + the linear index of the thread whose cp.async landed there and
  // which has not fenced it for the async proxy since (fence.proxy.async); 0 when none has.
  std::vector<std::uint16_t> unfenced_writer;
  // Per thread, at its exit: the wgmma instructions it executed (WgmmaQueue::trace, executed).
  std::vector<std::pair<std::uint64_t, std::uint32_t>> wgmma_traces;
  std::vector<std::unique_ptr<WarpState>> warps;

  BlockState() = default;
  BlockState(const BlockState&) = delete;
  BlockState& operator=(const BlockState&) = delete;
  ~BlockState() {
    if (shared != nullptr) ::operator delete(shared, std::align_val_t{128});
  }
  std::string name() const { return format("block (%u,%u,%u)", index.x, index.y, index.z); }
};

struct ThreadContext {
  Mode mode = Mode::BlockByBlock;
  BlockState* block = nullptr;
  WarpState* warp = nullptr;
  unsigned linear = 0;  // linear thread index within the block
  unsigned lane = 0;
  std::uint32_t barriers = 0;          // __syncthreads this thread has passed
  std::uint32_t full_collectives = 0;  // whole-warp collectives this lane has joined
  uint3 thread_idx{0, 0, 0};
  uint3 block_idx{0, 0, 0};
  dim3 block_dim{0, 0, 0};
  dim3 grid_dim{0, 0, 0};
};

inline thread_local ThreadContext tls;

// One __pipeline_memcpy_async, waiting for the __pipeline_wait_prior that completes its group.
struct AsyncCopy {
  unsigned char* dst = nullptr;
  std::size_t size = 0;
  std::array<unsigned char, 16> bytes{};  // what lands at dst: the source as read at the call, then zeros
  Site site;
};

// A thread's copies not yet completed, oldest first. The first `committed` of them form the
// committed groups, whose sizes (in copies, possibly 0) are in `groups`, oldest first; the rest are
// the open batch. Kept apart from ThreadContext, whose members are trivial to construct and read.
struct AsyncCopies {
  std::deque<AsyncCopy> copies;
  std::deque<std::size_t> groups;
  std::size_t committed = 0;
  // (offset, size) in shared memory of the copies landed since the thread's last fence.proxy.async,
  // each range once.
  std::vector<std::pair<std::size_t, std::size_t>> unfenced;

  void reset() {
    copies.clear();
    groups.clear();
    committed = 0;
    unfenced.clear();
  }
};

inline thread_local AsyncCopies async_copies;

// One lane's share of a wgmma.mma_async, waiting for the wgmma.wait_group that completes it: its
// accumulators, the A rows its accumulators take (gathered from its warp's registers at the call),
// B's shared-memory descriptor, read at the wait, and the lane's A registers with what they held at
// the call, which must still hold it at the wait.
struct WgmmaOp {
  float* d = nullptr;
  int n = 0;  // columns: d holds n / 2 sums
  MmaOperand kind = MmaOperand::F16;
  std::uint64_t desc = 0;
  float a[2][16] = {};  // rows q and q + 8 of the warp's 16, the reduction (16 deep, or 8 for TF32)
  const std::uint32_t* a_registers = nullptr;
  std::uint32_t a_at_call[4] = {};
  Site site;
};

// A lane's wgmma.mma_async calls not yet completed: the committed groups, oldest first (possibly
// empty ones), then the open batch (as AsyncCopies).
struct WgmmaQueue {
  std::vector<WgmmaOp> open;
  std::deque<std::vector<WgmmaOp>> groups;
  bool fenced = false;  // a wgmma.fence since the last wgmma.commit_group (or the thread's start)
  // The thread's wgmma instructions so far, in order (each one's kind and operands folded into a hash),
  // and how many: every thread of a warpgroup must execute the same ones (.sync.aligned).
  std::uint64_t trace = 0;
  std::uint32_t executed = 0;

  void record(std::uint64_t what, std::uint64_t operand = 0) {
    for (const std::uint64_t v : {what, operand}) trace = (trace ^ v) * 0x100000001b3ull;
    ++executed;
  }

  // The oldest call not completed; null when none is (empty groups left are fine).
  const WgmmaOp* oldest() const {
    for (const std::vector<WgmmaOp>& group : groups) {
      if (!group.empty()) return &group.front();
    }
    return open.empty() ? nullptr : &open.front();
  }
  void reset() {
    open.clear();
    groups.clear();
    fenced = false;
    trace = 0;
    executed = 0;
  }
};

inline thread_local WgmmaQueue wgmma_queue;

inline ThreadContext& current(const char* what) {
  if (tls.block == nullptr) fatal(format("%s called outside a kernel launched with emu::launch", what));
  return tls;
}

inline std::string thread_name(const ThreadContext& t) {
  return format("thread (%u,%u,%u) of %s", t.thread_idx.x, t.thread_idx.y, t.thread_idx.z,
                t.block->name().c_str());
}

// RCM_CHECK_VECTOR_ALIGNMENT of csrc/kernels/vector16.cuh: a vector load or store of `bytes` bytes at
// an address that is not a multiple of them, where the GPU faults (misaligned address).
inline void check_vector_alignment(const void* p, std::size_t bytes, const char* what) {
  if (reinterpret_cast<std::uintptr_t>(p) % bytes == 0) return;
  fatal(format("%s of %zu bytes by %s: address %p is not aligned to them (the GPU faults: misaligned address)",
               what, bytes, tls.block != nullptr ? thread_name(tls).c_str() : "host code", p));
}

inline unsigned char* dynamic_shared_memory() {
  return current("dynamic shared memory (RCM_DYNAMIC_SHARED)").block->shared;
}

// What ThreadSanitizer sees. Within a TsanIgnore it ignores the calling thread's memory accesses
// and, with also_sync, its synchronisation (atomics' acquire and release).
#if defined(__SANITIZE_THREAD__)
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
extern "C" void AnnotateIgnoreWritesBegin(const char* file, int line);
extern "C" void AnnotateIgnoreWritesEnd(const char* file, int line);
extern "C" void AnnotateIgnoreSyncBegin(const char* file, int line);
extern "C" void AnnotateIgnoreSyncEnd(const char* file, int line);

class TsanIgnore {
 public:
  explicit TsanIgnore(bool also_sync) : also_sync_(also_sync) {
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
    if (also_sync_) AnnotateIgnoreSyncBegin(__FILE__, __LINE__);
  }
  ~TsanIgnore() {
    if (also_sync_) AnnotateIgnoreSyncEnd(__FILE__, __LINE__);
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  }
  TsanIgnore(const TsanIgnore&) = delete;
  TsanIgnore& operator=(const TsanIgnore&) = delete;

 private:
  const bool also_sync_;
};
#else
struct TsanIgnore {
  explicit TsanIgnore(bool) {}
};
#endif

// A load for a diagnosis (has a thread exited, does one wait?), which ThreadSanitizer must not take
// for synchronisation: a thread that wrote, then exited, would otherwise happen-before whoever looks
// at `exited`, and a race between the two would go unreported.
inline std::uint32_t diagnostic_load(const std::atomic<std::uint32_t>& a) {
  const TsanIgnore unseen(/*also_sync=*/true);
  return a.load(std::memory_order_seq_cst);
}

// __syncthreads and its predicate variants: returns the number of threads whose predicate held.
inline unsigned block_barrier(bool predicate, const char* what, const std::source_location& loc) {
  ThreadContext& t = current(what);
  BlockState& b = *t.block;
  const Site site = Site::of(loc);
  const std::uint32_t phase = t.barriers++;
  const unsigned parity = phase & 1u;
  b.sites[parity][t.linear] = site;
  if (predicate) b.count[parity].fetch_add(1, std::memory_order_relaxed);
  const std::uint32_t arrived = b.arrived.fetch_add(1, std::memory_order_seq_cst) + 1;
  if (arrived == 1) {
    b.waiting_file.store(site.file, std::memory_order_relaxed);
    b.waiting_line.store(site.line, std::memory_order_relaxed);
  }
  // Arrive, then look (thread_exit publishes its exit, then looks). A thread that has exited is a
  // divergence only while this phase is unfinished: once complete, a thread may have left.
  const std::uint32_t gone = diagnostic_load(b.exited);
  if (gone != 0 && b.phase.load(std::memory_order_acquire) == phase) {
    fatal(format("divergent __syncthreads: %s waits at %s (%s) while %u thread(s) of its block have "
                 "already exited", thread_name(t).c_str(), site.str().c_str(), what, gone));
  }
  if (arrived == b.size) {
    b.result[parity] = b.count[parity].exchange(0, std::memory_order_relaxed);
    b.arrived.store(0, std::memory_order_relaxed);
    b.phase.store(phase + 1, std::memory_order_release);
    futex_wake_all(b.phase);
  } else {
    wait_until(
        b.phase, [&] { return b.phase.load(std::memory_order_acquire) != phase; },
        [&] {
          fatal(format("hang: %s waited %llds at __syncthreads %s: %u of %u threads arrived (is another one "
                       "stuck in a warp collective or a loop?)", thread_name(t).c_str(),
                       static_cast<long long>(watchdog().count()), site.str().c_str(), b.arrived.load(), b.size));
        });
  }
  // Every thread of the block must have waited at the same __syncthreads.
  const Site& first = b.sites[parity][0];
  if (!(first == site)) {
    fatal(format("divergent __syncthreads: %s waited at %s while thread 0 of its block waited at %s",
                 thread_name(t).c_str(), site.str().c_str(), first.str().c_str()));
  }
  return b.result[parity];
}

// The fast path of warp_collective: the mask is every lane of the warp.
template <typename Read>
void warp_collective_whole(ThreadContext& t, WarpState& w, WarpOp op, std::uint32_t mask, const void* value,
                           std::size_t size, const Site& site, Read&& read) {
  const std::uint32_t phase = t.full_collectives++;
  std::array<WarpSlot, 32>& slots = w.slots[phase & 1u];
  WarpSlot& mine = slots[t.lane];
  if (size != 0) std::memcpy(mine.value.data(), value, size);
  mine.op = op;
  mine.size = size;
  mine.site = site;
  const std::uint32_t arrived = w.full_arrived.fetch_add(1, std::memory_order_seq_cst) + 1;
  // Arrive, then look (thread_exit and the general path publish, then look: one side sees the other).
  // A lane that has exited is a divergence only while this phase is unfinished: once it completes,
  // every lane arrived, and a lane may leave the kernel before this one gets here.
  const std::uint32_t gone = mask & diagnostic_load(w.exited);
  if (gone != 0 && w.full_phase.load(std::memory_order_acquire) == phase) {
    fatal(format("divergent %s at %s: lanes %s of warp %u of %s have already exited, lane %u waits for them",
                 op_name(op), site.str().c_str(), lanes_of(gone).c_str(), w.index, t.block->name().c_str(),
                 t.lane));
  }
  if ((diagnostic_load(w.slow_waiting) & (1u << t.lane)) != 0) {
    fatal(format("divergent warp collectives in warp %u of %s: lane %u calls %s (whole warp) at %s while a "
                 "collective with a partial mask waits for it", w.index, t.block->name().c_str(), t.lane,
                 op_name(op), site.str().c_str()));
  }
  if (arrived == w.lanes) {
    w.full_arrived.store(0, std::memory_order_relaxed);
    w.full_phase.store(phase + 1, std::memory_order_release);
    futex_wake_all(w.full_phase);
  } else {
    wait_until(
        w.full_phase, [&] { return w.full_phase.load(std::memory_order_acquire) != phase; },
        [&] {
          fatal(format("hang: lane %u of warp %u of %s waited %llds in %s at %s: %u of %u lanes arrived", t.lane,
                       w.index, t.block->name().c_str(), static_cast<long long>(watchdog().count()), op_name(op),
                       site.str().c_str(), w.full_arrived.load(), w.lanes));
        });
  }
  const WarpSlot& first = slots[std::countr_zero(mask)];
  if (first.op != op || first.size != size) {
    fatal(format("divergent warp collectives in warp %u of %s: lane %u called %s at %s while lane %d called %s "
                 "at %s", w.index, t.block->name().c_str(), t.lane, op_name(op), site.str().c_str(),
                 std::countr_zero(mask), op_name(first.op), first.site.str().c_str()));
  }
  read(mask, [&slots](unsigned lane) { return slots[lane].value.data(); });
}

// Runs one warp collective for the calling lane: deposits `size` bytes of `value`, waits for the
// other lanes of the mask, then calls read(mask, value_of) where value_of(lane) points at the bytes
// lane deposited.
// For ThreadSanitizer only __syncwarp (bar.warp.sync) is synchronisation: on the GPU it is the one
// warp collective that orders memory between the lanes; the others wait for the warp without ordering
// anything. The collectives' own bookkeeping (the deposits, the list of partial-mask collectives)
// stays ordered by the protocol above, which TSan then cannot follow, so it ignores those accesses;
// `read` runs among them and may only write the calling lane's own variables.
template <typename Read>
void warp_collective(WarpOp op, std::uint32_t mask, const void* value, std::size_t size,
                     const std::source_location& loc, Read&& read) {
  const TsanIgnore bookkeeping(/*also_sync=*/op != WarpOp::Syncwarp);
  ThreadContext& t = current(op_name(op));
  WarpState& w = *t.warp;
  const Site site = Site::of(loc);
  const std::uint32_t bit = 1u << t.lane;
  if (mask == w.existing()) {
    warp_collective_whole(t, w, op, mask, value, size, site, std::forward<Read>(read));
    return;
  }
  std::list<WarpCollective>::iterator it;
  {
    std::lock_guard<std::mutex> lock(w.m);
    if ((mask & bit) == 0) {
      fatal(format("%s at %s: %s (lane %u) is not in its mask 0x%08x", op_name(op), site.str().c_str(),
                   thread_name(t).c_str(), t.lane, mask));
    }
    if ((mask & ~w.existing()) != 0) {
      fatal(format("%s at %s: mask 0x%08x names lanes %s that warp %u of %s does not have (it has %u)",
                   op_name(op), site.str().c_str(), mask, lanes_of(mask & ~w.existing()).c_str(), w.index,
                   t.block->name().c_str(), w.lanes));
    }
    if (const std::uint32_t gone = mask & diagnostic_load(w.exited)) {
      fatal(format("divergent %s at %s: lanes %s of its mask 0x%08x (warp %u of %s) have already exited",
                   op_name(op), site.str().c_str(), lanes_of(gone).c_str(), mask, w.index,
                   t.block->name().c_str()));
    }
    // A lane's next collective must be the oldest unfinished one whose mask names it.
    it = w.open.begin();
    for (; it != w.open.end(); ++it) {
      if (!it->complete.load(std::memory_order_relaxed) && (it->mask & bit) != 0) break;
    }
    if (it != w.open.end()) {
      if (it->op != op || it->mask != mask || it->value_size != size) {
        fatal(format("divergent warp collectives in warp %u of %s: lane %u calls %s (mask 0x%08x) at %s "
                     "while lanes %s wait in %s (mask 0x%08x) at %s", w.index, t.block->name().c_str(),
                     t.lane, op_name(op), mask, site.str().c_str(), lanes_of(it->arrived).c_str(),
                     op_name(it->op), it->mask, it->site.str().c_str()));
      }
    } else {
      it = w.open.emplace(w.open.end(), op, mask, size, site);
      w.slow_waiting.fetch_or(mask, std::memory_order_seq_cst);
    }
    // Lanes waiting in a whole-warp collective wait for this lane too.
    if (const std::uint32_t waiting = diagnostic_load(w.full_arrived)) {
      fatal(format("divergent warp collectives in warp %u of %s: lane %u calls %s (mask 0x%08x) at %s while "
                   "%u lane(s) wait for it in a whole-warp collective", w.index, t.block->name().c_str(), t.lane,
                   op_name(op), mask, site.str().c_str(), waiting));
    }
    if (size != 0) std::memcpy(it->values[t.lane].data(), value, size);
    it->arrived |= bit;
    if (it->arrived == mask) {
      it->readers.store(std::popcount(mask), std::memory_order_relaxed);
      it->complete.store(true, std::memory_order_release);
      std::uint32_t still_waiting = 0;
      for (const WarpCollective& o : w.open) {
        if (!o.complete.load(std::memory_order_relaxed)) still_waiting |= o.mask;
      }
      w.slow_waiting.store(still_waiting, std::memory_order_seq_cst);
      w.epoch.fetch_add(1, std::memory_order_relaxed);
      futex_wake_all(w.epoch);
    }
  }
  WarpCollective& c = *it;
  wait_until(
      w.epoch, [&] { return c.complete.load(std::memory_order_acquire); },
      [&] {
        std::lock_guard<std::mutex> lock(w.m);
        fatal(format("hang: lane %u of warp %u of %s waited %llds in %s at %s for lanes %s", t.lane, w.index,
                     t.block->name().c_str(), static_cast<long long>(watchdog().count()), op_name(op),
                     site.str().c_str(), lanes_of(mask & ~c.arrived).c_str()));
      });
  read(c.mask, [&c](unsigned lane) { return c.values[lane].data(); });
  if (c.readers.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    std::lock_guard<std::mutex> lock(w.m);
    w.open.erase(it);
  }
}

// Called when the kernel function of a thread returns.
inline void thread_exit() {
  ThreadContext& t = tls;
  if (const AsyncCopies& q = async_copies; !q.copies.empty()) {
    fatal(format("%s exited with %zu asynchronous copies pending (%zu of them never committed), the oldest "
                 "issued at %s: no __pipeline_wait_prior completed them", thread_name(t).c_str(),
                 q.copies.size(), q.copies.size() - q.committed, q.copies.front().site.str().c_str()));
  }
  if (const WgmmaOp* oldest = wgmma_queue.oldest()) {
    fatal(format("%s exited with wgmma.mma_async calls pending, the oldest issued at %s: no "
                 "wgmma.wait_group completed them", thread_name(t).c_str(), oldest->site.str().c_str()));
  }
  t.block->wgmma_traces[t.linear] = {wgmma_queue.trace, wgmma_queue.executed};
  {
    WarpState& w = *t.warp;
    w.exited.fetch_or(1u << t.lane, std::memory_order_seq_cst);
    if (const std::uint32_t waiting = diagnostic_load(w.full_arrived)) {
      fatal(format("divergent warp collective: lane %u of warp %u of %s exited while %u lane(s) wait for it in "
                   "a whole-warp collective (shuffle, vote, __syncwarp or a wmma *_sync)", t.lane, w.index, t.block->name().c_str(),
                   waiting));
    }
    std::lock_guard<std::mutex> lock(w.m);
    for (const WarpCollective& c : w.open) {
      if (!c.complete.load(std::memory_order_relaxed) && (c.mask & (1u << t.lane)) != 0) {
        fatal(format("divergent %s at %s: lane %u of warp %u of %s exited while lanes %s wait for it",
                     op_name(c.op), c.site.str().c_str(), t.lane, w.index, t.block->name().c_str(),
                     lanes_of(c.arrived).c_str()));
      }
    }
  }
  BlockState& b = *t.block;
  b.exited.fetch_add(1, std::memory_order_seq_cst);
  if (const std::uint32_t waiting = diagnostic_load(b.arrived)) {
    const char* file = b.waiting_file.load(std::memory_order_relaxed);
    fatal(format("divergent __syncthreads: %s exited while %u thread(s) of its block wait at %s:%u",
                 thread_name(t).c_str(), waiting, file != nullptr ? file : "?",
                 b.waiting_line.load(std::memory_order_relaxed)));
  }
}

template <typename T>
void check_shuffle_type() {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                "warp shuffles move trivially copyable values of at most 8 bytes");
}

inline void check_width(int width, const char* what, const std::source_location& loc) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fatal(format("%s at %s:%u: width %d is not a power of two in [1, 32]", what, loc.file_name(),
                 static_cast<unsigned>(loc.line()), width));
  }
}

template <typename T>
T shuffle(WarpOp op, std::uint32_t mask, T var, int arg, int width, const std::source_location& loc) {
  check_shuffle_type<T>();
  check_width(width, op_name(op), loc);
  const unsigned lane = current(op_name(op)).lane;
  const unsigned w = static_cast<unsigned>(width);
  const unsigned first = lane & ~(w - 1u);  // first lane of this lane's segment
  const unsigned last = first + w - 1u;
  unsigned src = lane;
  switch (op) {
    case WarpOp::Shfl:
      src = first + (static_cast<unsigned>(arg) & (w - 1u));
      break;
    case WarpOp::ShflUp:
      if (arg >= 0 && lane >= first + static_cast<unsigned>(arg)) src = lane - static_cast<unsigned>(arg);
      break;
    case WarpOp::ShflDown:
      if (arg >= 0 && lane + static_cast<unsigned>(arg) <= last) src = lane + static_cast<unsigned>(arg);
      break;
    case WarpOp::ShflXor: {
      const unsigned j = lane ^ (static_cast<unsigned>(arg) & 31u);
      if (j <= last) src = j;  // a lane of a later segment reads its own value
      break;
    }
    default:
      break;
  }
  T result = var;
  warp_collective(op, mask, &var, sizeof(T), loc, [&](std::uint32_t m, auto&& value_of) {
    if ((m & (1u << src)) == 0) {
      fatal(format("%s at %s:%u: lane %u reads lane %u, which is not in the mask 0x%08x (undefined value "
                   "on the GPU)", op_name(op), loc.file_name(), static_cast<unsigned>(loc.line()), lane, src, m));
    }
    std::memcpy(&result, value_of(src), sizeof(T));
  });
  return result;
}

inline std::uint32_t vote(WarpOp op, std::uint32_t mask, bool predicate, const std::source_location& loc) {
  const unsigned char p = predicate ? 1 : 0;
  std::uint32_t ballot = 0;
  warp_collective(op, mask, &p, 1, loc, [&](std::uint32_t m, auto&& value_of) {
    for (unsigned i = 0; i < 32; ++i) {
      if ((m & (1u << i)) != 0 && *value_of(i) != 0) ballot |= 1u << i;
    }
  });
  return ballot;
}

// ---------------------------------------------------------------------------------------------
// A pool of OS threads: run(jobs) runs every job on its own thread, all concurrently, and returns
// when all have finished. Threads are created on demand and kept for later launches.
class ThreadPool {
 public:
  static ThreadPool& instance() {
    static ThreadPool pool;
    return pool;
  }

  void run(std::vector<std::function<void()>>& jobs) {
    while (workers_.size() < jobs.size()) start_worker();
    {
      std::lock_guard<std::mutex> lock(done_m_);
      remaining_ = jobs.size();
    }
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      Worker& w = *workers_[i];
      {
        std::lock_guard<std::mutex> lock(w.m);
        w.job = std::move(jobs[i]);
        w.has_job = true;
      }
      w.cv.notify_one();
    }
    std::unique_lock<std::mutex> lock(done_m_);
    done_cv_.wait(lock, [&] { return remaining_ == 0; });
  }

  ~ThreadPool() {
    for (auto& w : workers_) {
      {
        std::lock_guard<std::mutex> lock(w->m);
        w->stop = true;
      }
      w->cv.notify_one();
    }
    for (auto& w : workers_) pthread_join(w->thread, nullptr);
  }

 private:
  struct Worker {
    ThreadPool* pool = nullptr;
    pthread_t thread{};
    std::mutex m;
    std::condition_variable cv;
    std::function<void()> job;
    bool has_job = false;
    bool stop = false;
  };

  ThreadPool() = default;

  void start_worker() {
    auto w = std::make_unique<Worker>();
    w->pool = this;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, std::size_t(2) << 20);
    const int rc = pthread_create(&w->thread, &attr, &ThreadPool::main, w.get());
    pthread_attr_destroy(&attr);
    if (rc != 0) fatal(format("cannot start emulator thread %zu (pthread_create: %d)", workers_.size(), rc));
    workers_.push_back(std::move(w));
  }

  static void* main(void* arg) {
    Worker& w = *static_cast<Worker*>(arg);
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(w.m);
        w.cv.wait(lock, [&] { return w.has_job || w.stop; });
        if (!w.has_job) return nullptr;
        job = std::move(w.job);
        w.has_job = false;
      }
      job();
      job = nullptr;
      std::lock_guard<std::mutex> lock(w.pool->done_m_);
      if (--w.pool->remaining_ == 0) w.pool->done_cv_.notify_one();
    }
  }

  std::vector<std::unique_ptr<Worker>> workers_;
  std::mutex done_m_;
  std::condition_variable done_cv_;
  std::size_t remaining_ = 0;
};

inline std::unique_ptr<BlockState> make_block(uint3 index, dim3 block, std::size_t shared_bytes) {
  auto b = std::make_unique<BlockState>();
  b->index = index;
  b->size = block.x * block.y * block.z;
  for (std::vector<Site>& sites : b->sites) sites.resize(b->size);
  b->shared_bytes = shared_bytes;
  b->shared = static_cast<unsigned char*>(::operator new(shared_bytes, std::align_val_t{128}));
  std::memset(b->shared, 0xff, shared_bytes);
  b->unfenced_writer.assign(shared_bytes, 0);
  b->wgmma_traces.resize(b->size);
  const unsigned warps = (b->size + 31u) / 32u;
  for (unsigned i = 0; i < warps; ++i) {
    auto w = std::make_unique<WarpState>();
    w->index = i;
    w->lanes = (i + 1u) * 32u <= b->size ? 32u : b->size - i * 32u;
    b->warps.push_back(std::move(w));
  }
  return b;
}

inline void add_block_jobs(std::vector<std::function<void()>>& jobs, BlockState* b, Mode mode, dim3 grid,
                           dim3 block, const std::function<void()>& body) {
  for (unsigned z = 0; z < block.z; ++z) {
    for (unsigned y = 0; y < block.y; ++y) {
      for (unsigned x = 0; x < block.x; ++x) {
        const unsigned linear = x + block.x * (y + block.y * z);
        jobs.emplace_back([b, mode, grid, block, linear, x, y, z, &body] {
          ThreadContext& t = tls;
          t.mode = mode;
          t.block = b;
          t.warp = b->warps[linear / 32u].get();
          t.linear = linear;
          t.lane = linear % 32u;
          t.thread_idx = uint3{x, y, z};
          t.block_idx = b->index;
          t.block_dim = block;
          t.grid_dim = grid;
          async_copies.reset();  // an empty group may be left from this pool thread's previous job
          wgmma_queue.reset();
          body();
          thread_exit();
          t = ThreadContext{};
        });
      }
    }
  }
}

// After every thread of block b has exited: the threads of each warpgroup (4 warps, 128 threads)
// executed the same wgmma instructions with the same operands, in the same order, as .sync.aligned
// asks (a warp that skips one hangs or corrupts the warpgroup's MMA on the GPU); a warpgroup that is
// not whole executed none.
inline void check_warpgroups(const BlockState& b) {
  for (unsigned first = 0; first < b.size; first += 128) {
    const unsigned end = std::min(first + 128, b.size);
    for (unsigned i = first; i < end; ++i) {
      const auto& [hash, executed] = b.wgmma_traces[i];
      if (executed != 0 && end - first < 128) {
        fatal(format("thread %u of %s executed wgmma instructions in a warpgroup of %u threads: wgmma needs "
                     "whole warpgroups of 4 warps", i, b.name().c_str(), end - first));
      }
      if (b.wgmma_traces[i] != b.wgmma_traces[first]) {
        fatal(format("the threads of warpgroup %u of %s did not execute the same wgmma instructions, as they must "
                     "(.aligned): thread %u executed %u of them, thread %u %u, or different ones",
                     first / 128, b.name().c_str(), first, b.wgmma_traces[first].second, i, executed));
      }
    }
  }
}

inline void run_launch(Mode mode, dim3 grid, dim3 block, std::size_t shared_bytes,
                       const std::function<void()>& body) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
  if (threads == 0 || blocks == 0) {
    fatal(format("invalid launch configuration: grid (%u,%u,%u), block (%u,%u,%u)", grid.x, grid.y, grid.z,
                 block.x, block.y, block.z));
  }
  if (threads > 1024 || block.z > 64) {
    fatal(format("invalid launch configuration: block (%u,%u,%u) exceeds 1024 threads or z > 64", block.x,
                 block.y, block.z));
  }
  if (grid.y > 65535 || grid.z > 65535) fatal("invalid launch configuration: grid.y or grid.z > 65535");
  if (shared_bytes > 227u * 1024u) fatal(format("%zu bytes of dynamic shared memory exceed 227 KiB", shared_bytes));
  if (tls.block != nullptr) fatal("emu::launch called from inside a kernel (dynamic parallelism)");

  static std::mutex launch_mutex;  // one launch at a time
  std::lock_guard<std::mutex> launch_lock(launch_mutex);
  ThreadPool& pool = ThreadPool::instance();
  std::vector<std::function<void()>> jobs;
  if (mode == Mode::AllBlocks) {
    const unsigned long long limit = static_cast<unsigned long long>(env_long("EMU_MAX_THREADS", 4096));
    if (threads * blocks > limit) {
      fatal(format("an AllBlocks launch of %llu threads exceeds EMU_MAX_THREADS=%llu: use a smaller grid "
                   "(grid-stride loops cover the rest) or Mode::BlockByBlock", threads * blocks, limit));
    }
    std::vector<std::unique_ptr<BlockState>> states;
    jobs.reserve(threads * blocks);
    for (unsigned z = 0; z < grid.z; ++z) {
      for (unsigned y = 0; y < grid.y; ++y) {
        for (unsigned x = 0; x < grid.x; ++x) {
          states.push_back(make_block(uint3{x, y, z}, block, shared_bytes));
          add_block_jobs(jobs, states.back().get(), mode, grid, block, body);
        }
      }
    }
    pool.run(jobs);
    for (const std::unique_ptr<BlockState>& state : states) check_warpgroups(*state);
    return;
  }
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        const std::unique_ptr<BlockState> state = make_block(uint3{x, y, z}, block, shared_bytes);
        jobs.clear();
        jobs.reserve(threads);
        add_block_jobs(jobs, state.get(), mode, grid, block, body);
        pool.run(jobs);
        check_warpgroups(*state);
      }
    }
  }
}

}  // namespace detail

// Launches kernel<<<grid, block, shared_bytes>>>(args...) and waits for it to finish. The arguments
// are converted to the kernel's parameter types once, and every thread gets its own copy.
template <typename... Params, typename... Args>
void launch(Mode mode, dim3 grid, dim3 block, std::size_t shared_bytes, void (*kernel)(Params...),
            Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "emu::launch: wrong number of kernel arguments");
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  const std::function<void()> body = [&params, kernel] { std::apply(kernel, params); };
  detail::run_launch(mode, grid, block, shared_bytes, body);
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------
// Built-in variables (read-only, per thread).
inline thread_local const uint3& threadIdx = ::emu::detail::tls.thread_idx;
inline thread_local const uint3& blockIdx = ::emu::detail::tls.block_idx;
inline thread_local const dim3& blockDim = ::emu::detail::tls.block_dim;
inline thread_local const dim3& gridDim = ::emu::detail::tls.grid_dim;
inline constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------
// Synchronisation.
inline void __syncthreads(std::source_location loc = std::source_location::current()) {
  ::emu::detail::block_barrier(false, "__syncthreads", loc);
}
inline int __syncthreads_count(int predicate, std::source_location loc = std::source_location::current()) {
  return static_cast<int>(::emu::detail::block_barrier(predicate != 0, "__syncthreads_count", loc));
}
inline int __syncthreads_and(int predicate, std::source_location loc = std::source_location::current()) {
  return ::emu::detail::block_barrier(predicate != 0, "__syncthreads_and", loc) ==
         ::emu::detail::tls.block->size;
}
inline int __syncthreads_or(int predicate, std::source_location loc = std::source_location::current()) {
  return ::emu::detail::block_barrier(predicate != 0, "__syncthreads_or", loc) != 0;
}

inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location loc = std::source_location::current()) {
  ::emu::detail::warp_collective(::emu::detail::WarpOp::Syncwarp, mask, nullptr, 0, loc,
                                 [](std::uint32_t, auto&&) {});
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
              std::source_location loc = std::source_location::current()) {
  return ::emu::detail::shuffle(::emu::detail::WarpOp::Shfl, mask, var, src_lane, width, loc);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 std::source_location loc = std::source_location::current()) {
  return ::emu::detail::shuffle(::emu::detail::WarpOp::ShflUp, mask, var, static_cast<int>(delta), width, loc);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   std::source_location loc = std::source_location::current()) {
  return ::emu::detail::shuffle(::emu::detail::WarpOp::ShflDown, mask, var, static_cast<int>(delta), width, loc);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  std::source_location loc = std::source_location::current()) {
  return ::emu::detail::shuffle(::emu::detail::WarpOp::ShflXor, mask, var, lane_mask, width, loc);
}

inline unsigned __ballot_sync(unsigned mask, int predicate,
                              std::source_location loc = std::source_location::current()) {
  return ::emu::detail::vote(::emu::detail::WarpOp::Ballot, mask, predicate != 0, loc);
}
inline int __any_sync(unsigned mask, int predicate, std::source_location loc = std::source_location::current()) {
  return ::emu::detail::vote(::emu::detail::WarpOp::Any, mask, predicate != 0, loc) != 0;
}
inline int __all_sync(unsigned mask, int predicate, std::source_location loc = std::source_location::current()) {
  return ::emu::detail::vote(::emu::detail::WarpOp::All, mask, predicate != 0, loc) == mask;
}

// ---------------------------------------------------------------------------------------------
#define RCM_CHECK_VECTOR_ALIGNMENT(p, bytes, what) ::emu::detail::check_vector_alignment(p, bytes, what)

// Asynchronous copies (cp.async) through the pipeline primitives; the model is in the header comment.
namespace emu {
namespace detail {

inline void async_copy(void* dst, const void* src, std::size_t size, std::size_t zfill,
                       const std::source_location& loc) {
  const char* what = "__pipeline_memcpy_async";
  const ThreadContext& t = current(what);
  const Site site = Site::of(loc);
  if (size != 4 && size != 8 && size != 16) {
    fatal(format("%s at %s: size_and_align is %zu; it must be 4, 8 or 16", what, site.str().c_str(), size));
  }
  if (zfill > size) {
    fatal(format("%s at %s: zfill %zu exceeds size_and_align %zu", what, site.str().c_str(), zfill, size));
  }
  const std::uintptr_t to = reinterpret_cast<std::uintptr_t>(dst);
  const std::uintptr_t from = reinterpret_cast<std::uintptr_t>(src);
  for (const auto& [name, address] : {std::pair{"dst_shared", to}, std::pair{"src_global", from}}) {
    if (address % size != 0) {
      fatal(format("%s at %s: %s %p is not aligned to size_and_align (%zu bytes)", what, site.str().c_str(), name,
                   reinterpret_cast<const void*>(address), size));
    }
  }
  const BlockState& b = *t.block;
  const std::uintptr_t shared = reinterpret_cast<std::uintptr_t>(b.shared);
  if (to < shared || to + size > shared + b.shared_bytes) {
    fatal(format("%s at %s: dst_shared [%p, +%zu bytes) is not inside the dynamic shared memory of %s ([%p, +%zu "
                 "bytes))", what, site.str().c_str(), dst, size, b.name().c_str(), static_cast<void*>(b.shared),
                 b.shared_bytes));
  }
  const std::size_t read = size - zfill;
  if (read != 0 && from < shared + b.shared_bytes && from + read > shared) {
    fatal(format("%s at %s: src_global %p points into the shared memory of %s; cp.async copies from global "
                 "memory", what, site.str().c_str(), src, b.name().c_str()));
  }
  AsyncCopy c;
  c.dst = static_cast<unsigned char*>(dst);
  c.size = size;
  c.site = site;
  if (read != 0) std::memcpy(c.bytes.data(), src, read);
  std::memset(dst, 0xff, size);
  async_copies.copies.push_back(c);
}

inline void async_commit() {
  current("__pipeline_commit");
  AsyncCopies& q = async_copies;
  q.groups.push_back(q.copies.size() - q.committed);
  q.committed = q.copies.size();
}

inline void async_wait(std::size_t prior) {
  const ThreadContext& t = current("__pipeline_wait_prior");
  BlockState& b = *t.block;
  AsyncCopies& q = async_copies;
  while (q.groups.size() > prior) {
    const std::size_t group = q.groups.front();
    for (std::size_t i = 0; i < group; ++i) {
      const AsyncCopy& c = q.copies.front();
      std::memcpy(c.dst, c.bytes.data(), c.size);
      const std::size_t at = static_cast<std::size_t>(c.dst - b.shared);
      std::fill_n(b.unfenced_writer.begin() + static_cast<std::ptrdiff_t>(at), c.size,
                  static_cast<std::uint16_t>(t.linear + 1));
      // Kept once: a kernel that never fences (its shared memory read by plain loads) copies to the same
      // places step after step.
      if (const std::pair<std::size_t, std::size_t> range{at, c.size};
          std::find(q.unfenced.begin(), q.unfenced.end(), range) == q.unfenced.end()) {
        q.unfenced.push_back(range);
      }
      q.copies.pop_front();
    }
    q.committed -= group;
    q.groups.pop_front();
  }
}

}  // namespace detail

// fence.proxy.async.shared::cta: the calling thread's cp.async writes to shared memory that have
// landed (at its __pipeline_wait_prior) become visible to the async proxy, through which a wgmma
// reads B, once a barrier orders the fence before the wgmma's issue. Without it the tensor cores may
// read what the bytes held before (emu::wgmma_mma_async checks that every byte of B it will read is
// fenced). Writes by plain stores are not tracked.
inline void fence_proxy_async_shared() {
  const detail::ThreadContext& t = detail::current("fence.proxy.async");
  detail::BlockState& b = *t.block;
  const auto me = static_cast<std::uint16_t>(t.linear + 1);
  detail::AsyncCopies& q = detail::async_copies;
  for (const auto& [at, size] : q.unfenced) {
    for (std::size_t i = at; i < at + size; ++i) {
      if (b.unfenced_writer[i] == me) b.unfenced_writer[i] = 0;
    }
  }
  q.unfenced.clear();
}

}  // namespace emu

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, std::size_t size_and_align,
                                    std::size_t zfill = 0,
                                    std::source_location loc = std::source_location::current()) {
  ::emu::detail::async_copy(dst_shared, src_global, size_and_align, zfill, loc);
}
inline void __pipeline_commit() { ::emu::detail::async_commit(); }
inline void __pipeline_wait_prior(std::size_t prior) { ::emu::detail::async_wait(prior); }

// ---------------------------------------------------------------------------------------------
// Atomics: relaxed, like the GPU's (no ordering, so they create no happens-before edges).
namespace emu {
namespace detail {

template <typename T>
T atomic_add(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}

template <typename T, typename F>
T atomic_update(T* address, F&& update) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (!ref.compare_exchange_weak(old, update(old), std::memory_order_relaxed)) {
  }
  return old;
}

// 16-bit floats: a compare-and-swap loop on the storage bits.
template <typename H>
H atomic_add_16(H* address, H value) {
  static_assert(sizeof(H) == sizeof(std::uint16_t));
  std::uint16_t* bits = &address->__x;
  const std::uint16_t old = atomic_update(bits, [&](std::uint16_t b) {
    H h;
    h.__x = b;
    return H(static_cast<float>(h) + static_cast<float>(value)).__x;
  });
  H result;
  result.__x = old;
  return result;
}

}  // namespace detail
}  // namespace emu

inline int atomicAdd(int* a, int v) { return ::emu::detail::atomic_add(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return ::emu::detail::atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return ::emu::detail::atomic_add(a, v);
}
inline float atomicAdd(float* a, float v) { return ::emu::detail::atomic_add(a, v); }
inline double atomicAdd(double* a, double v) { return ::emu::detail::atomic_add(a, v); }
inline __half atomicAdd(__half* a, __half v) { return ::emu::detail::atomic_add_16(a, v); }
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) { return ::emu::detail::atomic_add_16(a, v); }
inline float4 atomicAdd(float4* a, float4 v) {
  ::emu::detail::check_vector_alignment(a, sizeof(float4), "atomicAdd(float4)");
  return {::emu::detail::atomic_add(&a->x, v.x), ::emu::detail::atomic_add(&a->y, v.y),
          ::emu::detail::atomic_add(&a->z, v.z), ::emu::detail::atomic_add(&a->w, v.w)};
}
#define RCM_FLOAT4_ATOMICS 1

inline int atomicSub(int* a, int v) { return std::atomic_ref<int>(*a).fetch_sub(v, std::memory_order_relaxed); }
inline unsigned atomicSub(unsigned* a, unsigned v) {
  return std::atomic_ref<unsigned>(*a).fetch_sub(v, std::memory_order_relaxed);
}

template <typename T>
  requires(std::is_same_v<T, int> || std::is_same_v<T, unsigned> || std::is_same_v<T, unsigned long long> ||
           std::is_same_v<T, float>)
T atomicExch(T* a, T v) {
  return std::atomic_ref<T>(*a).exchange(v, std::memory_order_relaxed);
}

template <typename T>
  requires(std::is_same_v<T, int> || std::is_same_v<T, unsigned> || std::is_same_v<T, unsigned long long> ||
           std::is_same_v<T, unsigned short>)
T atomicCAS(T* a, T compare, T v) {
  std::atomic_ref<T>(*a).compare_exchange_strong(compare, v, std::memory_order_relaxed);
  return compare;  // the old value, whether or not the swap happened
}

template <typename T>
  requires(std::is_integral_v<T>)
T atomicMax(T* a, T v) {
  return ::emu::detail::atomic_update(a, [v](T old) { return old < v ? v : old; });
}

template <typename T>
  requires(std::is_integral_v<T>)
T atomicMin(T* a, T v) {
  return ::emu::detail::atomic_update(a, [v](T old) { return v < old ? v : old; });
}

// ---------------------------------------------------------------------------------------------
// WMMA: the fragment API of <mma.h>, for the shapes the kernels use (see the limits above).
namespace nvcuda {
namespace wmma {

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
namespace precision {
struct tf32;
}
enum layout_t { mem_row_major, mem_col_major };

// Round to nearest, ties away from zero, to 10 mantissa bits (cvt.rna.tf32.f32).
inline float __float_to_tf32(float in) {
  std::uint32_t bits = std::bit_cast<std::uint32_t>(in);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  return std::bit_cast<float>(bits);
}

namespace emu_detail {
template <typename T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};
template <typename Use, int M, int N, int K>
struct extent;
template <int M, int N, int K>
struct extent<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct extent<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct extent<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename T>
float operand(T v) {
  return static_cast<float>(v);
}
// The tensor cores read the 19 high bits of a tf32 operand.
inline float tf32_operand(float v) { return std::bit_cast<float>(std::bit_cast<std::uint32_t>(v) & 0xffffe000u); }

// The whole-warp rendezvous of a *_sync call; every lane deposits (pointer, ldm), which must agree.
inline void rendezvous(::emu::detail::WarpOp op, const void* p, unsigned ldm, std::size_t element_size,
                       const std::source_location& loc) {
  using namespace ::emu::detail;
  const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(p);
  if (p != nullptr && (address % 32 != 0 || (ldm * element_size) % 16 != 0)) {
    fatal(format("%s at %s:%u: the pointer must be 256-bit aligned and ldm a multiple of 16 bytes (pointer %% 32 = "
                 "%zu, ldm = %u elements of %zu bytes)", op_name(op), loc.file_name(), static_cast<unsigned>(loc.line()),
                 static_cast<std::size_t>(address % 32), ldm, element_size));
  }
  ThreadContext& t = current(op_name(op));
  if (t.warp->lanes != 32) {
    fatal(format("%s at %s:%u: warp %u of %s has %u lanes; WMMA needs whole warps", op_name(op), loc.file_name(),
                 static_cast<unsigned>(loc.line()), t.warp->index, t.block->name().c_str(), t.warp->lanes));
  }
  const std::uint64_t key = static_cast<std::uint64_t>(address) ^ (static_cast<std::uint64_t>(ldm) << 48);
  warp_collective(op, 0xffffffffu, &key, sizeof key, loc, [&](std::uint32_t, auto&& value_of) {
    for (unsigned lane = 0; lane < 32; ++lane) {
      std::uint64_t other;
      std::memcpy(&other, value_of(lane), sizeof other);
      if (other != key) {
        fatal(format("%s at %s:%u: lanes %u and %u of warp %u of %s pass different pointers or ldm", op_name(op),
                     loc.file_name(), static_cast<unsigned>(loc.line()), t.lane, lane, t.warp->index,
                     t.block->name().c_str()));
      }
    }
  });
}

// The lane that holds element (r, c) of a 16 x 16 accumulator fragment on sm_80+ tensor cores (the
// accumulators of two mma.m16n8 tiles side by side): lane 4 * (r % 8) + (c % 8) / 2 holds rows r and
// r + 8, columns c and c + 8. Stores write, and loads read for ThreadSanitizer, by this mapping, so
// that a kernel reading another lane's elements without __syncwarp races here as it does on the GPU.
inline unsigned accumulator_lane(int r, int c) { return static_cast<unsigned>(4 * (r % 8) + (c % 8) / 2); }

}  // namespace emu_detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
 public:
  using element_type = T;
  using storage_element_type = typename emu_detail::storage<T>::type;
  static constexpr int rows = emu_detail::extent<Use, M, N, K>::rows;
  static constexpr int cols = emu_detail::extent<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  storage_element_type x[num_elements];  // row-major: x[r * cols + c]
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, typename fragment<Use, M, N, K, T, Layout>::storage_element_type v) {
  for (auto& e : f.x) e = v;
}

// Operand fragments: the layout is the fragment's.
template <typename Use, int M, int N, int K, typename T, typename Layout>
  requires(!std::is_same_v<Use, accumulator>)
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f,
                      const typename fragment<Use, M, N, K, T, Layout>::storage_element_type* p, unsigned ldm,
                      std::source_location loc = std::source_location::current()) {
  using F = fragment<Use, M, N, K, T, Layout>;
  emu_detail::rendezvous(::emu::detail::WarpOp::WmmaLoad, p, ldm, sizeof(*p), loc);
  constexpr bool row = std::is_same_v<Layout, row_major>;
  for (int r = 0; r < F::rows; ++r) {
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = row ? p[r * ldm + c] : p[c * ldm + r];
  }
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm, layout_t layout,
                      std::source_location loc = std::source_location::current()) {
  static_assert(M == 16 && N == 16, "accumulator fragments are 16 x 16");
  emu_detail::rendezvous(::emu::detail::WarpOp::WmmaLoad, p, ldm, sizeof(float), loc);
  const unsigned lane = ::emu::detail::tls.lane;
  auto at = [&](int r, int c) { return layout == mem_row_major ? r * ldm + c : c * ldm + r; };
  {
    // Every lane holds the whole tile here, but on the GPU a lane loads only the elements it holds,
    // which are those it stores: a lane that loads what it stored, or stores over what it loaded,
    // touches only its own elements. For ThreadSanitizer a lane reads just those (the others unseen),
    // so that such in-place use is no race while a load of what other lanes wrote without __syncwarp
    // still is one.
    const ::emu::detail::TsanIgnore others(/*also_sync=*/false);
    for (int e = 0; e < M * N; ++e) f.x[e] = p[at(e / N, e % N)];
  }
  for (int e = 0; e < M * N; ++e) {
    if (emu_detail::accumulator_lane(e / N, e % N) == lane) f.x[e] = p[at(e / N, e % N)];
  }
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout,
                       std::source_location loc = std::source_location::current()) {
  static_assert(M == 16 && N == 16, "accumulator fragments are 16 x 16");
  emu_detail::rendezvous(::emu::detail::WarpOp::WmmaStore, p, ldm, sizeof(float), loc);
  for (int e = 0; e < M * N; ++e) {
    const int r = e / N, c = e % N;
    if (emu_detail::accumulator_lane(r, c) == ::emu::detail::tls.lane) {
      p[layout == mem_row_major ? r * ldm + c : c * ldm + r] = f.x[e];
    }
  }
}

template <int M, int N, int K, typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LayoutA>& a,
              const fragment<matrix_b, M, N, K, T, LayoutB>& b, const fragment<accumulator, M, N, K, float>& c,
              std::source_location loc = std::source_location::current()) {
  emu_detail::rendezvous(::emu::detail::WarpOp::WmmaMma, nullptr, 0, 1, loc);
  auto value = [](auto v) {
    if constexpr (std::is_same_v<T, precision::tf32>) {
      return emu_detail::tf32_operand(v);
    } else {
      return emu_detail::operand(v);
    }
  };
  float fa[M * K], fb[K * N];  // converted once: 16-bit conversions are the slow part here
  for (int e = 0; e < M * K; ++e) fa[e] = value(a.x[e]);
  for (int e = 0; e < K * N; ++e) fb[e] = value(b.x[e]);
  fragment<accumulator, M, N, K, float> result;
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float sum = c.x[i * N + j];
      for (int k = 0; k < K; ++k) sum += fa[i * K + k] * fb[k * N + j];
      result.x[i * N + j] = sum;
    }
  }
  d = result;
}

}  // namespace wmma
}  // namespace nvcuda

// ---------------------------------------------------------------------------------------------
// mma.sync (PTX), which kernels reach through csrc/kernels/mma_sync.cuh: the m16n8k16 shape for
// 16-bit operands and m16n8k8 for TF32, row-major A, column-major B, float accumulators.
namespace emu {
namespace detail {
// The value of a bf16 (else f16) element from its bits.
inline float float_of_16_bits(bool bf16, std::uint16_t bits) {
  if (bf16) {
    __nv_bfloat16 h;
    h.__x = bits;
    return static_cast<float>(h);
  }
  __half h;
  h.__x = bits;
  return static_cast<float>(h);
}

// An MMA's depth (k) for its input type, and the elements of its operands a 32-bit word holds.
inline int mma_depth(MmaOperand kind) { return kind == MmaOperand::TF32 ? 8 : 16; }
inline int elements_per_word(MmaOperand kind) { return kind == MmaOperand::TF32 ? 1 : 2; }

// Element k of an operand (in k order, elements_per_word to a word) from the word that holds it. TF32
// operands lose their low 13 mantissa bits, as the hardware ignores them.
inline float operand_element(MmaOperand kind, std::uint32_t word, int k) {
  if (kind == MmaOperand::TF32) return std::bit_cast<float>(word & 0xffffe000u);
  return float_of_16_bits(kind == MmaOperand::BF16, static_cast<std::uint16_t>(word >> (16 * (k % 2))));
}
}  // namespace detail

// d += a x b for the whole warp: every lane passes its fragment registers, laid out as the PTX ISA
// gives them (summarised in mma_sync.cuh), and gets its own four sums. A whole-warp collective
// (a lane missing is a divergence error). Products are exact in float (16-bit and TF32 operands
// alike) and are added in k order; TF32 operands lose their low 13 mantissa bits, as the hardware
// ignores them.
inline void mma_m16n8_sync(MmaOperand kind, float (&d)[4], const std::uint32_t (&a)[4], const std::uint32_t (&b)[2],
                           std::source_location loc = std::source_location::current()) {
  using namespace ::emu::detail;
  ThreadContext& t = current("mma.sync");
  if (t.warp->lanes != 32) {
    fatal(format("mma.sync at %s:%u: warp %u of %s has %u lanes; mma.sync needs whole warps", loc.file_name(),
                 static_cast<unsigned>(loc.line()), t.warp->index, t.block->name().c_str(), t.warp->lanes));
  }
  std::uint32_t regs[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  const unsigned q = t.lane / 4, lane_t = t.lane % 4;
  float sums[4] = {d[0], d[1], d[2], d[3]};  // written in the collective, which TSan does not watch
  warp_collective(WarpOp::MmaSync, 0xffffffffu, regs, sizeof regs, loc, [&](std::uint32_t, auto&& value_of) {
    auto word = [&](unsigned lane, int reg) {
      std::uint32_t w;
      std::memcpy(&w, value_of(lane) + reg * sizeof(std::uint32_t), sizeof w);
      return w;
    };
    // Element k of a row of A or a column of B, whose word w (of 8) lane 4 * lane_q + w % 4 holds
    // in register reg_low (w < 4) or reg_low + reg_high_step (w >= 4).
    const int depth = mma_depth(kind);
    auto element = [&](unsigned lane_q, int reg_low, int reg_high_step, int k) {
      const int w = k / elements_per_word(kind);  // 0..7
      return operand_element(kind, word(lane_q * 4 + w % 4, reg_low + reg_high_step * (w / 4)), k);
    };
    for (int r = 0; r < 4; ++r) {
      const int row_half = r / 2;             // rows q (0) and q + 8 (1)
      const unsigned column = 2 * lane_t + r % 2;
      float sum = sums[r];
      for (int k = 0; k < depth; ++k) {
        // A's row q + 8 * row_half: registers row_half and row_half + 2; B's column: 4 and 5.
        sum += element(q, row_half, 2, k) * element(column, 4, 1, k);
      }
      sums[r] = sum;
    }
  });
  for (int r = 0; r < 4; ++r) d[r] = sums[r];
}

}  // namespace emu

// ---------------------------------------------------------------------------------------------
// wgmma (PTX, sm_90a), which kernels reach through csrc/kernels/wgmma.cuh: m64nNk16 with f16 or bf16
// operands and m64nNk8 with TF32 ones, float accumulators, A in registers, B K-major in shared memory
// without swizzle.
namespace emu {
namespace detail {

inline std::size_t wgmma_b_bytes(MmaOperand kind) {  // of an element of B
  return 4 / static_cast<std::size_t>(elements_per_word(kind));
}

// The shared-memory offset of B's element (k, n) of a K-major, unswizzled operand, by its descriptor:
// core matrices of 8 rows (n) x 16 bytes (8 16-bit k or 4 TF32 k), rows 16 bytes apart, core
// matrices LBO apart along k and SBO apart along n (PTX ISA, "Matrix Descriptor Format" and the
// canonical K-major layout ((8,m),(T,2k)):((1T,SBO),(1,LBO))).
inline std::size_t wgmma_b_offset(std::uint64_t desc, MmaOperand kind, int k, int n) {
  const std::size_t start = (desc & 0x3fffu) << 4;
  const std::size_t lbo = ((desc >> 16) & 0x3fffu) << 4;
  const std::size_t sbo = ((desc >> 32) & 0x3fffu) << 4;
  const std::size_t bytes = wgmma_b_bytes(kind);
  const std::size_t per_row = 16 / bytes;  // k of a core matrix row
  return start + static_cast<std::size_t>(n / 8) * sbo + static_cast<std::size_t>(n % 8) * 16 +
         static_cast<std::size_t>(k) / per_row * lbo + static_cast<std::size_t>(k) % per_row * bytes;
}

// B's element (k, n), as the block's shared memory holds it now.
inline float wgmma_b_element(const WgmmaOp& op, int k, int n) {
  const BlockState& b = *tls.block;
  const std::size_t bytes = wgmma_b_bytes(op.kind);
  const std::size_t at = wgmma_b_offset(op.desc, op.kind, k, n);
  if (at + bytes > b.shared_bytes) {
    fatal(format("wgmma.mma_async at %s: B's element (k %d, n %d) at shared byte %zu is past the block's %zu bytes "
                 "(descriptor 0x%016llx)", op.site.str().c_str(), k, n, at, b.shared_bytes,
                 static_cast<unsigned long long>(op.desc)));
  }
  std::uint32_t word = 0;  // the element in its place in a word: a 16-bit one of even k in the low half
  std::memcpy(reinterpret_cast<unsigned char*>(&word) + (bytes == 2 ? 2 * (k % 2) : 0), b.shared + at, bytes);
  return operand_element(op.kind, word, k);
}

// At the issue of a wgmma that reads B through its descriptor: every byte of B that a cp.async wrote
// has been fenced for the async proxy by the thread that wrote it (emu::fence_proxy_async_shared).
// (Bytes past the block's shared memory are the wait's error.)
inline void check_b_fenced(const WgmmaOp& op) {
  const BlockState& b = *tls.block;
  const std::size_t bytes = wgmma_b_bytes(op.kind);
  for (int n = 0; n < op.n; ++n) {
    for (int k = 0; k < mma_depth(op.kind); ++k) {
      const std::size_t at = wgmma_b_offset(op.desc, op.kind, k, n);
      for (std::size_t i = at; i < at + bytes && i < b.shared_bytes; ++i) {
        if (const std::uint16_t writer = b.unfenced_writer[i]) {
          fatal(format("wgmma.mma_async at %s: B's element (k %d, n %d) at shared byte %zu was written by the "
                       "cp.async of thread %u of %s, which did not fence it for the async proxy "
                       "(fence.proxy.async) before this call: the tensor cores may read what it held before",
                       op.site.str().c_str(), k, n, i, writer - 1u, b.name().c_str()));
        }
      }
    }
  }
}

// d += A x B for one lane's accumulators (D's layout: the m16n8 one of the warp's 16 rows, once per
// 8 columns: d[4 j + r] is row q + 8 (r / 2), column 8 j + 2 t + r % 2), products exact in float,
// added in k order.
inline void wgmma_complete(const WgmmaOp& op) {
  if (std::memcmp(op.a_registers, op.a_at_call, sizeof op.a_at_call) != 0) {
    fatal(format("wgmma.mma_async at %s: %s changed its A registers before the wgmma.wait_group that "
                 "completes the call (the tensor cores read them until then)",
                 op.site.str().c_str(), thread_name(tls).c_str()));
  }
  const unsigned t = tls.lane % 4;
  for (int j = 0; j < op.n / 8; ++j) {
    for (int r = 0; r < 4; ++r) {
      const int column = 8 * j + 2 * static_cast<int>(t) + r % 2;
      float sum = op.d[4 * j + r];
      for (int k = 0; k < mma_depth(op.kind); ++k) sum += op.a[r / 2][k] * wgmma_b_element(op, k, column);
      op.d[4 * j + r] = sum;
    }
  }
}

}  // namespace detail

// wgmma.fence: orders the registers' earlier accesses before the wgmma.mma_async calls after it. A
// call copies its A registers at once (and checks them at its wait), so all there is to check is that
// a thread fences before the first call of each group (emu::wgmma_mma_async): stricter than the PTX
// ISA, which asks for it only where registers the calls use were written since the last fence.
inline void wgmma_fence() {
  detail::current("wgmma.fence");
  detail::wgmma_queue.fenced = true;
  detail::wgmma_queue.record(1);
}

// One lane's wgmma.mma_async.m64nNk16 (f16, bf16) or m64nNk8 (TF32), n columns (8 to 256): every lane
// of the warp calls it (a whole-warp collective; the warpgroup's other warps, when the block ends), with
// A's fragment of the warp's 16 rows as the PTX ISA lays it out (the same as mma.m16n8k16's and
// m16n8k8's: a[0] word t of row q, a[1] of row q + 8, a[2] and a[3] words t + 4) and B's
// descriptor, the same in every lane. The
// call takes the A rows its lane's accumulators need; d += A x B happens at the wgmma.wait_group
// that completes it, reading B from shared memory then, so that B overwritten before that wait,
// or d read before it, shows; so does a change to `a` (the caller's registers) before that wait,
// which `a` must therefore outlive (a temporary array reads as freed stack at the wait).
// Only K-major B without swizzle; anything else in the descriptor is an error.
inline void wgmma_mma_async(MmaOperand kind, int n, float* d, const std::uint32_t (&a)[4], std::uint64_t desc,
                            std::source_location loc = std::source_location::current()) {
  using namespace detail;
  ThreadContext& t = current("wgmma.mma_async");
  const Site site = Site::of(loc);
  if (!wgmma_queue.fenced) {
    fatal(format("wgmma.mma_async at %s: %s called it with no wgmma.fence since its last wgmma.commit_group (or "
                 "its start): its writes to the A fragments and the accumulators are not ordered before the "
                 "tensor cores read them", site.str().c_str(), thread_name(t).c_str()));
  }
  if (t.warp->lanes != 32) {
    fatal(format("wgmma.mma_async at %s: warp %u of %s has %u lanes; it needs whole warps", site.str().c_str(),
                 t.warp->index, t.block->name().c_str(), t.warp->lanes));
  }
  if (n < 8 || n > 256 || n % 8 != 0) fatal(format("wgmma.mma_async at %s: n = %d", site.str().c_str(), n));
  if ((desc >> 62) != 0 || ((desc >> 49) & 7u) != 0) {
    fatal(format("wgmma.mma_async at %s: descriptor 0x%016llx asks for a swizzle or a base offset, which the "
                 "emulator does not model", site.str().c_str(), static_cast<unsigned long long>(desc)));
  }
  unsigned char deposit[24];
  std::memcpy(deposit, a, 16);
  std::memcpy(deposit + 16, &desc, 8);
  WgmmaOp op;
  op.d = d;
  op.n = n;
  op.kind = kind;
  op.desc = desc;
  op.a_registers = a;
  std::memcpy(op.a_at_call, a, sizeof op.a_at_call);
  op.site = site;
  const unsigned q = t.lane / 4;
  bool uniform = true;
  warp_collective(WarpOp::Wgmma, 0xffffffffu, deposit, sizeof deposit, loc, [&](std::uint32_t, auto&& value_of) {
    for (unsigned lane = 0; lane < 32; ++lane) uniform = uniform && std::memcmp(value_of(lane) + 16, &desc, 8) == 0;
    for (int h = 0; h < 2; ++h) {
      for (int k = 0; k < mma_depth(kind); ++k) {
        const int word = k / elements_per_word(kind);  // of the row's 8: lane 4 q + word % 4, register h + 2 (word / 4)
        std::uint32_t bits;
        std::memcpy(&bits, value_of(4 * q + word % 4) + 4 * (h + 2 * (word / 4)), sizeof bits);
        op.a[h][k] = operand_element(kind, bits, k);
      }
    }
  });
  if (!uniform) {
    fatal(format("wgmma.mma_async at %s: the lanes of warp %u of %s pass different descriptors", site.str().c_str(),
                 t.warp->index, t.block->name().c_str()));
  }
  if (t.lane == 0) check_b_fenced(op);  // B is the warp's, the same in every lane
  wgmma_queue.record(2 | static_cast<std::uint64_t>(n) << 8 | static_cast<std::uint64_t>(kind) << 24, desc);
  wgmma_queue.open.push_back(op);
}

// wgmma.commit_group: the calls since the last commit become a group (possibly empty).
inline void wgmma_commit_group() {
  detail::current("wgmma.commit_group");
  detail::WgmmaQueue& q = detail::wgmma_queue;
  q.fenced = false;
  q.record(3);
  q.groups.push_back(std::move(q.open));
  q.open.clear();
}

// wgmma.wait_group N: completes every committed group but the N most recent.
inline void wgmma_wait_group(int pending) {
  detail::current("wgmma.wait_group");
  detail::WgmmaQueue& q = detail::wgmma_queue;
  q.record(4 | static_cast<std::uint64_t>(pending) << 8);
  while (q.groups.size() > static_cast<std::size_t>(pending)) {
    for (const detail::WgmmaOp& op : q.groups.front()) detail::wgmma_complete(op);
    q.groups.pop_front();
  }
}

}  // namespace emu

// The shared-window address of p, in the block's dynamic shared memory: its offset there.
inline std::size_t __cvta_generic_to_shared(const void* p, std::source_location loc = std::source_location::current()) {
  const ::emu::detail::BlockState& b = *::emu::detail::current("__cvta_generic_to_shared").block;
  const auto* byte = static_cast<const unsigned char*>(p);
  if (byte < b.shared || byte >= b.shared + b.shared_bytes) {
    ::emu::detail::fatal(::emu::detail::format("__cvta_generic_to_shared at %s: the pointer is not in the block's "
                                               "dynamic shared memory", ::emu::detail::Site::of(loc).str().c_str()));
  }
  return static_cast<std::size_t>(byte - b.shared);
}

#endif  // host emulation
