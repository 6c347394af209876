// Self-test of the CUDA emulation harness (cuda_emulation.h).
//
//   test_harness <case>     runs one case; exit 0 = pass
//   test_harness --list     prints the case names
//
// Two kinds of cases:
//   * features: the emulated built-ins, collectives, shared memory, atomics, WMMA, mma.sync and
//     asynchronous copies give the results a GPU gives (exit 0 expected);
//   * planted bugs and their correct twins: each planted kernel must make the run FAIL with the
//     expected report (checked by expect_failure.cmake), its twin must pass:
//       shared_race            a shared-memory race inside a block      -> ThreadSanitizer
//       oob_read               an out-of-bounds global read             -> AddressSanitizer
//       block_scatter_race     a non-atomic scatter between blocks     -> ThreadSanitizer (AllBlocks)
//       divergent_barrier      __syncthreads skipped by some threads    -> the harness
//       divergent_barrier_late __syncthreads after some threads exited -> the harness
//       divergent_barrier_sites  threads at two different __syncthreads -> the harness
//       divergent_shuffle      a shuffle half the warp does not reach   -> the harness
//       hang                   a barrier and a shuffle waiting for each other -> the watchdog
//       wmma_store_race        reading another lane's store_matrix_sync output without __syncwarp
//                                                                  -> ThreadSanitizer
//       wmma_staging_reuse_race  store_matrix_sync over a tile other lanes are still reading
//                                                                  -> ThreadSanitizer
//       wmma_load_race, wmma_accumulator_load_race
//                              load_matrix_sync of a tile other lanes wrote, without __syncwarp,
//                              into an operand / accumulator fragment -> ThreadSanitizer
//       shuffle_orders_nothing  reading another lane's shared-memory write with only a shuffle
//                              in between                          -> ThreadSanitizer
//       mma_sync_orders_nothing  the same with only an mma.sync in between -> ThreadSanitizer
//       wmma_misaligned        load_matrix_sync from a pointer that is not 256-bit aligned -> the harness
//       wmma_divergent         mma_sync called by half a warp      -> the harness
//       mma_sync_divergent     emu::mma_m16n8_sync called by half a warp -> the harness
//       wgmma_pending_at_exit  a committed wgmma never waited for    -> the harness
//       wgmma_swizzled         a descriptor asking for a swizzle      -> the harness
//       wgmma_a_changed        a wgmma's A registers changed before its wait (twin: wgmma)
//                                                                  -> the harness
//       wgmma_unfenced         a wgmma with no wgmma.fence before it (twin: wgmma) -> the harness
//       wgmma_b_unfenced       a wgmma reading B that cp.async wrote, which its writers did not fence
//                              for the async proxy (twin: wgmma_b_fenced) -> the harness
//       wgmma_warpgroup_divergent  one warp of a warpgroup skipping the wgmma the others issue
//                              (twin: wgmma)                      -> the harness
//       async_copy_unwaited_race  cp.async data read by another thread after a __syncthreads that
//                              the issuer reached before its __pipeline_wait_prior
//                                                                  -> ThreadSanitizer; elsewhere the
//                                                                     read of the poison (a check)
//       async_copy_pending_at_exit  a committed cp.async never waited for -> the harness
//       async_copy_to_global   cp.async into global memory          -> the harness
//       async_copy_misaligned  a 16-byte cp.async to a 4-byte aligned address -> the harness
//       vector_misaligned      load16 (csrc/kernels/vector16.cuh) from a 4-byte aligned address
//                                                                  -> the harness
#include "cuda_emulation.h"
#include "kernels/vector16.cuh"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

int g_failures = 0;

#define EXPECT(cond)                                                               \
  do {                                                                             \
    if (!(cond)) {                                                                 \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                                \
    }                                                                              \
  } while (0)

#define EXPECT_EQ(a, b)                                                                        \
  do {                                                                                         \
    const auto va_ = (a);                                                                      \
    const auto vb_ = (b);                                                                      \
    if (!(va_ == vb_)) {                                                                       \
      std::fprintf(stderr, "%s:%d: check failed: %s == %s (%lld vs %lld)\n", __FILE__, __LINE__, #a, #b, \
                   static_cast<long long>(va_), static_cast<long long>(vb_));                  \
      ++g_failures;                                                                            \
    }                                                                                          \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Feature kernels.

__global__ void index_kernel(unsigned* out) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned global = block * (blockDim.x * blockDim.y * blockDim.z) + thread;
  out[global] = global + 1;
}

void case_builtins() {
  for (const emu::Mode mode : {emu::Mode::BlockByBlock, emu::Mode::AllBlocks}) {
    const dim3 grid(3, 2, 1), block(4, 3, 2);
    std::vector<unsigned> out(6 * 24, 0);
    emu::launch(mode, grid, block, 0, index_kernel, out.data());
    for (unsigned i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], i + 1);
  }
}

// Each lane records the result of every shuffle flavour; the expectation is computed here.
__global__ void shuffle_kernel(int* out, int width) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int base = (static_cast<int>(threadIdx.x) / 32) * 32;
  int* o = out + 8 * static_cast<int>(threadIdx.x);
  const int v = 1000 * (base / 32) + lane;
  o[0] = __shfl_sync(0xffffffffu, v, 3, width);
  o[1] = __shfl_up_sync(0xffffffffu, v, 2, width);
  o[2] = __shfl_down_sync(0xffffffffu, v, 5, width);
  o[3] = __shfl_xor_sync(0xffffffffu, v, 9, width);
  o[4] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[5] = __any_sync(0xffffffffu, lane == 17);
  o[6] = __all_sync(0xffffffffu, lane < 31);
  __syncwarp();
  // Double and a reduction over the full warp.
  double d = lane + 0.5;
  for (int delta = 16; delta > 0; delta /= 2) d += __shfl_xor_sync(0xffffffffu, d, delta);
  o[7] = static_cast<int>(d * 2);
}

void case_shuffles() {
  for (const int width : {32, 16, 8, 4}) {
    const unsigned threads = 64;
    std::vector<int> out(8 * threads, -1);
    emu::launch(emu::Mode::BlockByBlock, 1, threads, 0, shuffle_kernel, out.data(), width);
    for (unsigned t = 0; t < threads; ++t) {
      const int lane = static_cast<int>(t % 32);
      const int warp = static_cast<int>(t / 32);
      auto value = [&](int l) { return 1000 * warp + l; };
      const int first = lane & ~(width - 1);
      const int* o = out.data() + 8 * t;
      EXPECT_EQ(o[0], value(first + 3 % width));
      EXPECT_EQ(o[1], value(lane - 2 >= first ? lane - 2 : lane));
      EXPECT_EQ(o[2], value(lane + 5 < first + width ? lane + 5 : lane));
      const int x = lane ^ 9;
      EXPECT_EQ(o[3], value(x < first + width ? x : lane));
      EXPECT_EQ(static_cast<unsigned>(o[4]), 0x49249249u);
      EXPECT_EQ(o[5], 1);
      EXPECT_EQ(o[6], 0);
      EXPECT_EQ(o[7], 2 * (31 * 32 / 2) + 32);
    }
  }
}

// A partial last warp (48 threads: lanes 0..15 of warp 1) using a mask of the lanes it has.
__global__ void partial_warp_kernel(int* out) {
  const unsigned lane = threadIdx.x % 32;
  const unsigned mask = threadIdx.x < 32 ? 0xffffffffu : 0x0000ffffu;
  int v = static_cast<int>(lane);
  for (int delta = 8; delta > 0; delta /= 2) v += __shfl_xor_sync(mask, v, delta, 16);
  out[threadIdx.x] = v;
  // A subset of the warp synchronises on its own.
  if (lane < 4) {
    const unsigned ballot = __ballot_sync(0xfu, lane >= 2);
    out[48 + threadIdx.x] = static_cast<int>(ballot);
  }
}

void case_partial_warp() {
  std::vector<int> out(96, -1);
  emu::launch(emu::Mode::BlockByBlock, 1, 48, 0, partial_warp_kernel, out.data());
  for (unsigned t = 0; t < 48; ++t) {
    const int segment = static_cast<int>((t % 32) / 16);
    const int expected = 16 * segment * 16 + 120;  // sum of the 16 lanes of the segment
    EXPECT_EQ(out[t], expected);
    if (t % 32 < 4) EXPECT_EQ(out[48 + t], 0xc);
  }
}

// Tree reduction through shared memory and __syncthreads.
__global__ void block_sum_kernel(const float* in, float* out, int* count_out) {
  RCM_DYNAMIC_SHARED(float, partial);
  const unsigned t = threadIdx.x;
  partial[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
    if (t < s) partial[t] += partial[t + s];
    __syncthreads();
  }
  const int count = __syncthreads_count(in[blockIdx.x * blockDim.x + t] > 0.5f);
  const int all = __syncthreads_and(1);
  const int any = __syncthreads_or(t == 7);
  if (t == 0) {
    out[blockIdx.x] = partial[0];
    count_out[blockIdx.x] = count * all * any;
  }
}

void case_block_reduction() {
  const unsigned blocks = 3, threads = 256;
  std::vector<float> in(blocks * threads);
  for (unsigned i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 7) * 0.25f;
  std::vector<float> out(blocks, -1.0f);
  std::vector<int> count(blocks, -1);
  emu::launch(emu::Mode::BlockByBlock, blocks, threads, threads * sizeof(float), block_sum_kernel, in.data(),
              out.data(), count.data());
  for (unsigned b = 0; b < blocks; ++b) {
    float sum = 0;
    int above = 0;
    for (unsigned t = 0; t < threads; ++t) {
      sum += in[b * threads + t];
      above += in[b * threads + t] > 0.5f;
    }
    EXPECT(out[b] == sum);
    EXPECT_EQ(count[b], above);
  }
}

// Dynamic shared memory: private to each block, also in AllBlocks mode.
__global__ void dynamic_shared_kernel(int* out, int n) {
  RCM_DYNAMIC_SHARED(int, buffer);
  const int t = static_cast<int>(threadIdx.x);
  buffer[t] = static_cast<int>(blockIdx.x) * 100 + t;
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = buffer[(t + 1) % n];
}

void case_dynamic_shared() {
  for (const emu::Mode mode : {emu::Mode::BlockByBlock, emu::Mode::AllBlocks}) {
    const int blocks = 4, threads = 40;
    std::vector<int> out(blocks * threads, -1);
    emu::launch(mode, blocks, threads, threads * sizeof(int), dynamic_shared_kernel, out.data(), threads);
    for (int b = 0; b < blocks; ++b) {
      for (int t = 0; t < threads; ++t) EXPECT_EQ(out[b * threads + t], b * 100 + (t + 1) % threads);
    }
  }
}

// Never-written dynamic shared memory reads as NaN.
__global__ void uninitialised_shared_kernel(float* out) {
  RCM_DYNAMIC_SHARED(float, buffer);
  out[threadIdx.x] = buffer[threadIdx.x];
}

void case_uninitialised_shared() {
  std::vector<float> out(8, 0.0f);
  emu::launch(emu::Mode::BlockByBlock, 1, 8, 8 * sizeof(float), uninitialised_shared_kernel, out.data());
  for (float v : out) EXPECT(std::isnan(v));
}

__global__ void atomics_kernel(int* i, unsigned long long* u, float* f, double* d, __half* h, int* mx) {
  atomicAdd(i, 1);
  atomicAdd(u, 3ull);
  atomicAdd(f, 0.5f);
  atomicAdd(d, 0.25);
  atomicAdd(h, __half(1.0f));
  atomicMax(mx, static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x));
}

void case_atomics() {
  int i = 0, mx = -1;
  unsigned long long u = 0;
  float f = 0;
  double d = 0;
  __half h(0.0f);
  const unsigned blocks = 4, threads = 64;
  emu::launch(emu::Mode::AllBlocks, blocks, threads, 0, atomics_kernel, &i, &u, &f, &d, &h, &mx);
  const unsigned n = blocks * threads;
  EXPECT_EQ(i, static_cast<int>(n));
  EXPECT_EQ(u, 3ull * n);
  EXPECT(f == 0.5f * n);
  EXPECT(d == 0.25 * n);
  EXPECT(static_cast<float>(h) == static_cast<float>(n));
  EXPECT_EQ(mx, static_cast<int>(n - 1));
  int old = 5;
  EXPECT_EQ(atomicCAS(&old, 5, 9), 5);
  EXPECT_EQ(old, 9);
  EXPECT_EQ(atomicCAS(&old, 5, 1), 9);
  EXPECT_EQ(atomicExch(&old, 4), 9);
  EXPECT_EQ(atomicSub(&old, 1), 4);
  EXPECT_EQ(atomicMin(&old, -2), 3);
  EXPECT_EQ(old, -2);
}

// The 16-bit types: exact round trips and round-to-nearest-even.
void case_half_types() {
  // Every half converts to float and back unchanged (NaNs stay NaN).
  for (unsigned b = 0; b < 65536; ++b) {
    __half h;
    h.__x = static_cast<std::uint16_t>(b);
    const float f = static_cast<float>(h);
    const __half back(f);
    if (std::isnan(f)) {
      EXPECT((back.__x & 0x7c00u) == 0x7c00u && (back.__x & 0x3ffu) != 0);
    } else if (back.__x != b) {
      std::fprintf(stderr, "half round trip 0x%04x -> %a -> 0x%04x\n", b, static_cast<double>(f), back.__x);
      ++g_failures;
    }
    __nv_bfloat16 bf;
    bf.__x = static_cast<std::uint16_t>(b);
    const float g = static_cast<float>(bf);
    if (!std::isnan(g)) EXPECT_EQ(__nv_bfloat16(g).__x, bf.__x);
  }
  EXPECT_EQ(__half(1.0f).__x, 0x3c00);
  EXPECT_EQ(__half(65504.0f).__x, 0x7bff);
  EXPECT_EQ(__half(65519.0f).__x, 0x7bff);
  EXPECT_EQ(__half(65520.0f).__x, 0x7c00);  // the tie rounds to even: infinity
  EXPECT_EQ(__half(0x1p-24f).__x, 0x0001);
  EXPECT_EQ(__half(0x1p-25f).__x, 0x0000);  // tie to even zero
  EXPECT_EQ(__half(0x1.8p-25f).__x, 0x0001);
  EXPECT_EQ(__half(1.0f + 0x1p-11f).__x, 0x3c00);  // tie to even
  EXPECT_EQ(__half(1.0f + 0x1.8p-11f).__x, 0x3c01);
  EXPECT_EQ(__half(-2.0f).__x, 0xc000);
  EXPECT_EQ(__nv_bfloat16(1.0f).__x, 0x3f80);
  EXPECT_EQ(__nv_bfloat16(1.0f + 0x1p-8f).__x, 0x3f80);  // tie to even
  EXPECT_EQ(__nv_bfloat16(1.0f + 0x1.8p-8f).__x, 0x3f81);
  EXPECT_EQ(__nv_bfloat16(1.0f + 0x1.8p-7f).__x, 0x3f82);  // tie to even, upwards
  EXPECT(std::isnan(static_cast<float>(__nv_bfloat16(std::nanf("")))));
#if defined(__FLT16_MAX__)
  // Against the compiler's own _Float16 where it has one.
  std::uint32_t state = 12345;
  for (int i = 0; i < 300000; ++i) {
    state = state * 1664525u + 1013904223u;
    const std::uint32_t bits = (state & 0x807fffffu) | ((100u + (state >> 7) % 60u) << 23);
    const float f = std::bit_cast<float>(bits);
    const _Float16 reference = static_cast<_Float16>(f);
    std::uint16_t rb;
    std::memcpy(&rb, &reference, 2);
    if (__half(f).__x != rb) {
      std::fprintf(stderr, "float %a -> half 0x%04x, _Float16 gives 0x%04x\n", static_cast<double>(f),
                   __half(f).__x, rb);
      ++g_failures;
      break;
    }
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// Planted bugs and their twins.

// Each thread writes its slot, then reads its neighbour's: without the barrier that is a race.
template <bool kBarrier>
__global__ void shared_neighbour_kernel(const float* in, float* out) {
  RCM_DYNAMIC_SHARED(float, tile);
  const unsigned t = threadIdx.x;
  tile[t] = in[blockIdx.x * blockDim.x + t] * 2.0f;
  if constexpr (kBarrier) __syncthreads();
  out[blockIdx.x * blockDim.x + t] = tile[(t + 1) % blockDim.x];
}

template <bool kBarrier>
void case_shared_neighbour() {
  const unsigned blocks = 2, threads = 64;
  std::vector<float> in(blocks * threads), out(blocks * threads);
  std::iota(in.begin(), in.end(), 0.0f);
  emu::launch(emu::Mode::BlockByBlock, blocks, threads, threads * sizeof(float), shared_neighbour_kernel<kBarrier>,
              in.data(), out.data());
  if (kBarrier) {
    for (unsigned b = 0; b < blocks; ++b) {
      for (unsigned t = 0; t < threads; ++t) EXPECT(out[b * threads + t] == 2.0f * in[b * threads + (t + 1) % threads]);
    }
  }
}

// Reads in[i + 1] for every i < n: the last thread reads one past the end.
template <bool kGuard>
__global__ void neighbour_sum_kernel(const float* in, float* out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  const float next = (!kGuard || i + 1 < n) ? in[i + 1] : 0.0f;
  out[i] = in[i] + next;
}

template <bool kGuard>
void case_neighbour_sum() {
  const int n = 100;
  std::vector<float> in(n, 1.0f), out(n, 0.0f);
  emu::launch(emu::Mode::BlockByBlock, 2, 64, 0, neighbour_sum_kernel<kGuard>, in.data(), out.data(), n);
  if (kGuard) {
    for (int i = 0; i < n; ++i) EXPECT(out[i] == (i + 1 < n ? 2.0f : 1.0f));
  }
}

// Every block adds into the same histogram; within a block the threads hit different bins, so only
// the blocks race with each other.
template <bool kAtomic>
__global__ void histogram_kernel(float* bins) {
  const unsigned bin = threadIdx.x;
  const float v = static_cast<float>(blockIdx.x + 1);
  if constexpr (kAtomic) {
    atomicAdd(bins + bin, v);
  } else {
    bins[bin] += v;
  }
}

template <bool kAtomic>
void case_histogram() {
  const unsigned blocks = 4, threads = 32;
  std::vector<float> bins(threads, 0.0f);
  emu::launch(emu::Mode::AllBlocks, blocks, threads, 0, histogram_kernel<kAtomic>, bins.data());
  if (kAtomic) {
    for (float b : bins) EXPECT(b == 10.0f);
  }
}

// Threads past n return early, then the rest wait at a barrier.
template <bool kUniform>
__global__ void early_exit_barrier_kernel(const float* in, float* out, int n) {
  RCM_DYNAMIC_SHARED(float, tile);
  const int t = static_cast<int>(threadIdx.x);
  if (!kUniform && t >= n) return;
  tile[t] = t < n ? in[t] : 0.0f;
  __syncthreads();
  if (t < n) out[t] = tile[n - 1 - t];
}

template <bool kUniform>
void case_early_exit_barrier() {
  const int n = 40;
  std::vector<float> in(n), out(n, -1.0f);
  std::iota(in.begin(), in.end(), 0.0f);
  emu::launch(emu::Mode::BlockByBlock, 1, 64, 64 * sizeof(float), early_exit_barrier_kernel<kUniform>, in.data(),
              out.data(), n);
  for (int t = 0; t < n; ++t) EXPECT(out[t] == in[n - 1 - t]);
}

// Threads that finish early skip the second barrier, which the others still reach.
__global__ void late_divergent_barrier_kernel(float* out) {
  const unsigned t = threadIdx.x;
  out[t] = 1.0f;
  __syncthreads();
  if (t % 2 == 0) {
    __syncthreads();
    out[t] += 1.0f;
  }
}

void case_divergent_barrier_late() {
  std::vector<float> out(64);
  emu::launch(emu::Mode::BlockByBlock, 1, 64, 0, late_divergent_barrier_kernel, out.data());
}

// Odd and even threads wait at two different barriers (undefined behaviour in CUDA, even though
// every thread reaches "a" barrier).
__global__ void two_barriers_kernel(float* out) {
  const unsigned t = threadIdx.x;
  if (t % 2 == 0) {
    out[t] = 1.0f;
    __syncthreads();
  } else {
    out[t] = 2.0f;
    __syncthreads();
  }
}

void case_divergent_barrier_sites() {
  std::vector<float> out(64);
  emu::launch(emu::Mode::BlockByBlock, 1, 64, 0, two_barriers_kernel, out.data());
}

// A warp sum that only the lanes holding data take part in (a full-warp mask nonetheless).
template <bool kUniform>
__global__ void lane_sum_kernel(const float* in, float* out, int n) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  float v = lane < n ? in[lane] : 0.0f;
  if (kUniform || lane < n) {
    for (int delta = 16; delta > 0; delta /= 2) v += __shfl_xor_sync(0xffffffffu, v, delta);
  }
  if (lane == 0) out[0] = v;
}

template <bool kUniform>
void case_lane_sum() {
  const int n = 20;
  std::vector<float> in(n, 1.0f), out(1, 0.0f);
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 0, lane_sum_kernel<kUniform>, in.data(), out.data(), n);
  EXPECT(out[0] == static_cast<float>(n));
}

// Lane 0 waits at __syncthreads for its warp mates, which wait for it in a shuffle: neither can
// go on. No thread exits, so only the watchdog can tell (EMU_WATCHDOG_SECONDS).
__global__ void barrier_vs_shuffle_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
  }
  out[threadIdx.x] = v;
}

void case_hang() {
  std::vector<float> out(32);
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 0, barrier_vs_shuffle_kernel, out.data());
}

// ---------------------------------------------------------------------------------------------
// WMMA.

namespace wmma = nvcuda::wmma;

// One warp: c (32 x 32, row-major) = a (32 x kDepth, row-major) * b (kDepth x 32, col-major, i.e.
// stored [n][k]) + 1, through 16 x 16 fragments, the accumulators loaded from / stored to c.
template <typename T, typename Elem, int kFragK>
__global__ void wmma_gemm_kernel(const Elem* a, const Elem* b, float* c, int depth) {
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, kFragK, T, wmma::row_major>;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, kFragK, T, wmma::col_major>;
  using FragC = wmma::fragment<wmma::accumulator, 16, 16, kFragK, float>;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      FragC acc;
      wmma::load_matrix_sync(acc, c + i * 16 * 32 + j * 16, 32, wmma::mem_row_major);
      FragC one;
      wmma::fill_fragment(one, 1.0f);
      for (int e = 0; e < acc.num_elements; ++e) acc.x[e] += one.x[e];
      for (int k = 0; k < depth; k += kFragK) {
        FragA fa;
        FragB fb;
        wmma::load_matrix_sync(fa, a + i * 16 * depth + k, depth);
        wmma::load_matrix_sync(fb, b + j * 16 * depth + k, depth);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(c + i * 16 * 32 + j * 16, acc, 32, wmma::mem_row_major);
    }
  }
}

// Pseudo-random matrix entries in [-1, 1], multiples of 1/1000, from a seed.
class MatrixValues {
 public:
  explicit MatrixValues(std::uint32_t seed) : state_(seed) {}
  float operator()() {
    state_ = state_ * 1664525u + 1013904223u;
    return static_cast<float>(static_cast<int>(state_ >> 9) % 2001 - 1000) / 1000.0f;
  }

 private:
  std::uint32_t state_;
};

template <typename T, typename Elem, int kFragK>
void check_wmma_gemm(const char* what) {
  constexpr int kDepth = 32;
  alignas(32) static Elem a[32 * kDepth], b[32 * kDepth];
  alignas(32) static float c[32 * 32];
  MatrixValues next(7);
  for (auto& v : a) v = static_cast<Elem>(next());
  for (auto& v : b) v = static_cast<Elem>(next());
  for (auto& v : c) v = next();
  if constexpr (std::is_same_v<T, wmma::precision::tf32>) {
    for (auto& v : a) v = wmma::__float_to_tf32(v);
    for (auto& v : b) v = wmma::__float_to_tf32(v);
  }
  std::vector<double> want(32 * 32);
  for (int r = 0; r < 32; ++r) {
    for (int n = 0; n < 32; ++n) {
      double sum = static_cast<double>(c[r * 32 + n]) + 1.0;
      for (int k = 0; k < kDepth; ++k) {
        sum += static_cast<double>(static_cast<float>(a[r * kDepth + k])) * static_cast<float>(b[n * kDepth + k]);
      }
      want[r * 32 + n] = sum;
    }
  }
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 0, wmma_gemm_kernel<T, Elem, kFragK>, a, b, c, kDepth);
  for (int i = 0; i < 32 * 32; ++i) {
    if (!(std::abs(c[i] - want[i]) <= 1e-5 * (1 + std::abs(want[i])))) {
      std::fprintf(stderr, "%s: c[%d] = %.9g, want %.9g\n", what, i, static_cast<double>(c[i]), want[i]);
      ++g_failures;
      return;
    }
  }
}

void case_wmma() {
  check_wmma_gemm<__half, __half, 16>("half");
  check_wmma_gemm<__nv_bfloat16, __nv_bfloat16, 16>("bfloat16");
  check_wmma_gemm<wmma::precision::tf32, float, 8>("tf32");
  // cvt.rna: to nearest with 10 mantissa bits, ties away from zero; tensor cores drop the rest.
  EXPECT(wmma::__float_to_tf32(1.0f + 0x1p-11f) == 1.0f + 0x1p-10f);
  EXPECT(wmma::__float_to_tf32(-(1.0f + 0x1p-11f)) == -(1.0f + 0x1p-10f));
  EXPECT(wmma::__float_to_tf32(1.0f + 0x1.fp-12f) == 1.0f);
  EXPECT(std::isinf(wmma::__float_to_tf32(INFINITY)) && std::isnan(wmma::__float_to_tf32(NAN)));
}

// After store_matrix_sync each lane reads an element that, for most lanes, another lane stored:
// without __syncwarp that is a race (the store rendezvous comes before the writes, as on the GPU).
template <bool kSync>
__global__ void wmma_store_then_read_kernel(float* out) {
  RCM_DYNAMIC_SHARED(float, tile);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, static_cast<float>(blockIdx.x + 1));
  wmma::store_matrix_sync(tile, acc, 16, wmma::mem_row_major);
  if (kSync) __syncwarp();
  out[threadIdx.x] = tile[(threadIdx.x + 1) % 32];
}

template <bool kSync>
void case_wmma_store_read() {
  std::vector<float> out(32);
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 256 * sizeof(float), wmma_store_then_read_kernel<kSync>, out.data());
  for (float v : out) EXPECT(v == 1.0f);
}

// The staging tile of a WMMA epilogue, used twice: store, __syncwarp, each lane reads an element
// that, for most lanes, another lane stored, and the next store overwrites the tile. Without a second __syncwarp that
// store races with the reads: store_matrix_sync waits for the warp but orders no memory.
template <bool kSync>
__global__ void wmma_staging_reuse_kernel(float* out) {
  RCM_DYNAMIC_SHARED(float, tile);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  float sum = 0.0f;
  for (int round = 1; round <= 2; ++round) {
    wmma::fill_fragment(acc, static_cast<float>(round));
    wmma::store_matrix_sync(tile, acc, 16, wmma::mem_row_major);
    __syncwarp();
    sum += tile[(threadIdx.x + 1) % 32];
    if (kSync) __syncwarp();
  }
  out[threadIdx.x] = sum;
}

template <bool kSync>
void case_wmma_staging_reuse() {
  std::vector<float> out(32);
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 256 * sizeof(float), wmma_staging_reuse_kernel<kSync>, out.data());
  for (float v : out) EXPECT(v == 3.0f);
}

// Every lane writes eight consecutive elements of a tile, then load_matrix_sync reads it: without
// __syncwarp in between, a race (load_matrix_sync orders no memory either), into an operand fragment
// and into an accumulator alike: most lanes do not write the elements they would load (see the
// emulator's load_matrix_sync).
template <bool kSync, bool kAccumulator>
__global__ void wmma_load_after_writes_kernel(float* out) {
  using Elem = std::conditional_t<kAccumulator, float, __half>;
  RCM_DYNAMIC_SHARED(Elem, tile);
  for (unsigned e = threadIdx.x * 8; e < threadIdx.x * 8 + 8; ++e) tile[e] = Elem(static_cast<float>(e % 4));
  if (kSync) __syncwarp();
  float sum = 0.0f;
  if constexpr (kAccumulator) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::load_matrix_sync(acc, tile, 16, wmma::mem_row_major);
    for (int e = 0; e < acc.num_elements; ++e) sum += acc.x[e];
  } else {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, tile, 16);
    for (int e = 0; e < fa.num_elements; ++e) sum += static_cast<float>(fa.x[e]);
  }
  out[threadIdx.x] = sum;
}

template <bool kSync, bool kAccumulator>
void case_wmma_load_after_writes() {
  using Elem = std::conditional_t<kAccumulator, float, __half>;
  std::vector<float> out(32);
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 256 * sizeof(Elem), wmma_load_after_writes_kernel<kSync, kAccumulator>,
              out.data());
  for (float v : out) EXPECT(v == 384.0f);  // 64 each of 0, 1, 2, 3
}

// load_matrix_sync needs a 256-bit aligned pointer: one element off is an error.
__global__ void wmma_misaligned_kernel(const __half* a, float* out) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a + 1, 16);
  out[threadIdx.x] = static_cast<float>(fa.x[0]);
}

void case_wmma_misaligned() {
  alignas(32) static __half a[17 * 16];
  std::vector<float> out(32);
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 0, wmma_misaligned_kernel, a, out.data());
}

// mma_sync from half of the warp only.
__global__ void wmma_divergent_kernel(float* out) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(fa, __half(1.0f));
  wmma::fill_fragment(fb, __half(1.0f));
  wmma::fill_fragment(acc, 0.0f);
  if (threadIdx.x < 16) wmma::mma_sync(acc, fa, fb, acc);
  out[threadIdx.x] = acc.x[0];
}

void case_wmma_divergent() {
  std::vector<float> out(32);
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 0, wmma_divergent_kernel, out.data());
}

// ---------------------------------------------------------------------------------------------
// mma.sync (emu::mma_m16n8_sync).

// The tensor cores' input type for a matrix of Elem (float: TF32).
template <typename Elem>
constexpr emu::MmaOperand operand_kind() {
  return std::is_same_v<Elem, __half>          ? emu::MmaOperand::F16
         : std::is_same_v<Elem, __nv_bfloat16> ? emu::MmaOperand::BF16
                                               : emu::MmaOperand::TF32;
}

// An element's bits, as a fragment register holds them.
template <typename Elem>
std::uint32_t bits_of(Elem v) {
  if constexpr (std::is_same_v<Elem, float>) {
    return std::bit_cast<std::uint32_t>(v);
  } else {
    return v.__x;
  }
}

// What the tensor cores multiply for an element: for TF32, the float without the bits below its
// 10-bit mantissa, which they ignore.
template <typename Elem>
double operand_value(Elem v) {
  const float f = static_cast<float>(v);
  return std::is_same_v<Elem, float> ? std::bit_cast<float>(std::bit_cast<std::uint32_t>(f) & 0xffffe000u) : f;
}

// One warp: d (16 x 8, row-major) = c + a (16 x 2 kDepth, row-major) x b (2 kDepth x 8, stored
// [n][k]) in two MMAs of depth kDepth, each lane's fragments gathered element by element with the
// PTX ISA's formulas for element i of a fragment (not the word view of the harness's model).
template <typename Elem, int kDepth>
__global__ void mma_sync_kernel(const Elem* a, const Elem* b, const float* c, float* d) {
  const unsigned q = threadIdx.x / 4, t = threadIdx.x % 4;  // groupID, threadID_in_group
  constexpr emu::MmaOperand kind = operand_kind<Elem>();
  float acc[4];
  for (int i = 0; i < 4; ++i) acc[i] = c[(q + 8 * (i / 2)) * 8 + 2 * t + i % 2];
  for (int k0 = 0; k0 < 2 * kDepth; k0 += kDepth) {
    std::uint32_t fa[4] = {}, fb[2] = {};
    auto put = [](std::uint32_t* regs, int i, Elem v, int per_reg) {
      regs[i / per_reg] |= bits_of(v) << (32 / per_reg * (i % per_reg));
    };
    if constexpr (kDepth == 16) {  // m16n8k16: a0..a7, b0..b3, two per register
      for (int i = 0; i < 8; ++i) {
        const unsigned row = (i < 2 || (i >= 4 && i < 6)) ? q : q + 8;
        const unsigned col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
        put(fa, i, a[row * 2 * kDepth + k0 + col], 2);
      }
      for (int i = 0; i < 4; ++i) put(fb, i, b[q * 2 * kDepth + k0 + t * 2 + (i & 1) + (i >= 2 ? 8 : 0)], 2);
    } else {  // m16n8k8 (tf32): a0..a3, b0, b1, one per register
      for (int i = 0; i < 4; ++i) {
        const unsigned row = (i == 0 || i == 2) ? q : q + 8;
        const unsigned col = i < 2 ? t : t + 4;
        put(fa, i, a[row * 2 * kDepth + k0 + col], 1);
      }
      for (int i = 0; i < 2; ++i) put(fb, i, b[q * 2 * kDepth + k0 + (i == 0 ? t : t + 4)], 1);
    }
    emu::mma_m16n8_sync(kind, acc, fa, fb);
  }
  for (int i = 0; i < 4; ++i) d[(q + 8 * (i / 2)) * 8 + 2 * t + i % 2] = acc[i];
}

template <typename Elem, int kDepth>
void check_mma_sync(const char* what) {
  std::vector<Elem> a(16 * 2 * kDepth), b(8 * 2 * kDepth);
  std::vector<float> c(16 * 8), d(16 * 8);
  MatrixValues next(11);
  for (auto& v : a) v = static_cast<Elem>(next());
  for (auto& v : b) v = static_cast<Elem>(next());
  for (auto& v : c) v = next();
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 0, mma_sync_kernel<Elem, kDepth>, a.data(), b.data(), c.data(),
              d.data());
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      double want = c[r * 8 + n];
      for (int k = 0; k < 2 * kDepth; ++k) {
        want += operand_value(a[r * 2 * kDepth + k]) * operand_value(b[n * 2 * kDepth + k]);
      }
      if (!(std::abs(d[r * 8 + n] - want) <= 1e-5 * (1 + std::abs(want)))) {
        std::fprintf(stderr, "%s: d[%d][%d] = %.9g, want %.9g\n", what, r, n, static_cast<double>(d[r * 8 + n]),
                     want);
        ++g_failures;
        return;
      }
    }
  }
}

void case_mma_sync() {
  check_mma_sync<__half, 16>("half");
  check_mma_sync<__nv_bfloat16, 16>("bfloat16");
  check_mma_sync<float, 8>("tf32");
}

// One warpgroup's d = c + A x B, 64 x 16, two MMAs deep (two wgmma calls, k16 for 16-bit Elem, k8
// for float as TF32; one commit, one wait), A in registers laid out as the PTX ISA's figures for
// m64nNk16 and m64nNk8 (warp w: rows 16 w .. 16 w + 15, as mma.m16n8k16's and m16n8k8's A), B K-major
// in shared memory as core matrices of 8 n x 16 bytes of k, those along k kLbo bytes apart and those
// along n kSbo bytes apart (offsets unlike the kernels', so that a swap shows). overwrite_b: B's
// shared memory changed between the calls and the wait, which the result must show (the emulator
// reads B at the wait).
constexpr int kWgmmaN = 16;
constexpr std::uint32_t kLbo = 384, kSbo = 128;  // core matrices along k 384 bytes apart, along n 128
constexpr std::size_t kWgmmaB = kLbo + 2 * kSbo;  // one MMA's B: [0, 256) and [384, 640), a gap between
constexpr std::size_t kWgmmaShared = 2 * kWgmmaB;

template <typename Elem>
constexpr int wgmma_depth() {  // of one call
  return std::is_same_v<Elem, float> ? 8 : 16;
}

template <typename Elem>
std::size_t wgmma_b_offset(int k, int n) {  // of element (k, n): MMA k / depth's B at kWgmmaB (k / depth)
  constexpr int kPerRow = 16 / sizeof(Elem);  // k of a core matrix row
  const int m = k / wgmma_depth<Elem>(), kk = k % wgmma_depth<Elem>();
  return m * kWgmmaB + (n / 8) * kSbo + (n % 8) * 16 + (kk / kPerRow) * kLbo + (kk % kPerRow) * sizeof(Elem);
}

template <typename Elem>
__global__ void wgmma_kernel(const Elem* a, const Elem* b, const float* c, float* d, bool overwrite_b) {
  constexpr int kDepth = wgmma_depth<Elem>(), kK = 2 * kDepth;
  constexpr int kPerWord = 4 / sizeof(Elem);
  RCM_DYNAMIC_SHARED(unsigned char, shared);
  const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32, q = lane / 4, t = lane % 4;
  if (threadIdx.x == 0) {
    for (int k = 0; k < kK; ++k) {
      for (int n = 0; n < kWgmmaN; ++n) std::memcpy(shared + wgmma_b_offset<Elem>(k, n), &b[n * kK + k], sizeof(Elem));
    }
    // As on the GPU, where plain stores reach the tensor cores' reads only through this fence (the
    // emulator tracks cp.async's writes only).
    emu::fence_proxy_async_shared();
  }
  __syncthreads();
  float acc[kWgmmaN / 2];
  for (int j = 0; j < kWgmmaN / 8; ++j) {
    for (int r = 0; r < 4; ++r) acc[4 * j + r] = c[(16 * warp + q + 8 * (r / 2)) * kWgmmaN + 8 * j + 2 * t + r % 2];
  }
  emu::wgmma_fence();
  std::uint32_t fa[2][4] = {};  // each call's A, unchanged until the wait
  for (int m = 0; m < 2; ++m) {
    for (int reg = 0; reg < 4; ++reg) {  // row q + 8 (reg % 2), word t + 4 (reg / 2)
      const unsigned row = 16 * warp + q + 8 * (reg % 2), col = kDepth * m + kPerWord * (t + 4 * (reg / 2));
      for (int e = 0; e < kPerWord; ++e) fa[m][reg] |= bits_of(a[row * kK + col + e]) << (16 * e);
    }
    const std::uint64_t desc = (__cvta_generic_to_shared(shared + m * kWgmmaB) >> 4) |
                               (static_cast<std::uint64_t>(kLbo >> 4) << 16) |
                               (static_cast<std::uint64_t>(kSbo >> 4) << 32);
    emu::wgmma_mma_async(operand_kind<Elem>(), kWgmmaN, acc, fa[m], desc);
  }
  emu::wgmma_commit_group();
  if (overwrite_b) {
    __syncthreads();
    if (threadIdx.x == 0) std::memset(shared, 0, kWgmmaShared);  // B = 0: d must come out as c
    __syncthreads();
  }
  emu::wgmma_wait_group(0);
  for (int j = 0; j < kWgmmaN / 8; ++j) {
    for (int r = 0; r < 4; ++r) d[(16 * warp + q + 8 * (r / 2)) * kWgmmaN + 8 * j + 2 * t + r % 2] = acc[4 * j + r];
  }
}

template <typename Elem>
void check_wgmma(const char* what, bool overwrite_b) {
  constexpr int kK = 2 * wgmma_depth<Elem>();
  std::vector<Elem> a(64 * kK), b(kWgmmaN * kK);
  std::vector<float> c(64 * kWgmmaN), d(64 * kWgmmaN);
  MatrixValues next(13);
  for (auto& v : a) v = static_cast<Elem>(next());
  for (auto& v : b) v = static_cast<Elem>(next());
  for (auto& v : c) v = next();
  emu::launch(emu::Mode::BlockByBlock, 1, 128, kWgmmaShared, wgmma_kernel<Elem>, a.data(), b.data(), c.data(), d.data(),
              overwrite_b);
  for (int r = 0; r < 64; ++r) {
    for (int n = 0; n < kWgmmaN; ++n) {
      double want = c[r * kWgmmaN + n];
      for (int k = 0; k < kK && !overwrite_b; ++k) {
        want += operand_value(a[r * kK + k]) * operand_value(b[n * kK + k]);
      }
      if (!(std::abs(d[r * kWgmmaN + n] - want) <= 1e-5 * (1 + std::abs(want)))) {
        std::fprintf(stderr, "%s: d[%d][%d] = %.9g, want %.9g\n", what, r, n, static_cast<double>(d[r * kWgmmaN + n]),
                     want);
        ++g_failures;
        return;
      }
    }
  }
}

void case_wgmma() {
  check_wgmma<__half>("half", false);
  check_wgmma<__nv_bfloat16>("bfloat16", false);
  check_wgmma<float>("tf32", false);
  check_wgmma<__nv_bfloat16>("bfloat16, B overwritten before the wait", true);
}

// Runs kernel(out) on one warpgroup (one block of 128 threads) with 256 bytes of shared memory: the
// planted wgmma cases below.
template <void (*kKernel)(float*)>
void case_one_warpgroup() {
  std::vector<float> out(128);
  emu::launch(emu::Mode::BlockByBlock, 1, 128, 256, kKernel, out.data());
}

// A committed wgmma whose group no wait completes.
__global__ void wgmma_pending_at_exit_kernel(float* out) {
  RCM_DYNAMIC_SHARED(unsigned char, shared);
  float acc[4] = {};
  const std::uint32_t fa[4] = {};
  emu::wgmma_fence();
  emu::wgmma_mma_async(emu::MmaOperand::BF16, 8, acc, fa, __cvta_generic_to_shared(shared) >> 4);
  emu::wgmma_commit_group();
  out[threadIdx.x] = 0.0f;
}

// A registers of a committed wgmma changed before the wait that completes it.
__global__ void wgmma_a_changed_kernel(float* out) {
  RCM_DYNAMIC_SHARED(unsigned char, shared);
  float acc[4] = {};
  std::uint32_t fa[4] = {};
  emu::wgmma_fence();
  emu::wgmma_mma_async(emu::MmaOperand::BF16, 8, acc, fa, __cvta_generic_to_shared(shared) >> 4);
  emu::wgmma_commit_group();
  fa[threadIdx.x % 4] = 0x3f803f80u;  // the next step's fragments, written too early
  emu::wgmma_wait_group(0);
  out[threadIdx.x] = acc[0];
}

// A descriptor with the 128-byte swizzle (mode 1 in bits 62-63), which the emulator does not model.
__global__ void wgmma_swizzled_kernel(float* out) {
  RCM_DYNAMIC_SHARED(unsigned char, shared);
  float acc[4] = {};
  const std::uint32_t fa[4] = {};
  const std::uint64_t desc = (__cvta_generic_to_shared(shared) >> 4) | (std::uint64_t{1} << 62);
  emu::wgmma_fence();
  emu::wgmma_mma_async(emu::MmaOperand::BF16, 8, acc, fa, desc);
  emu::wgmma_commit_group();
  emu::wgmma_wait_group(0);
  out[threadIdx.x] = acc[0];
}

// A wgmma with no wgmma.fence before it: the accumulators' zeros, written just before, are not ordered
// before the tensor cores' reads.
__global__ void wgmma_unfenced_kernel(float* out) {
  RCM_DYNAMIC_SHARED(unsigned char, shared);
  float acc[4] = {};
  const std::uint32_t fa[4] = {};
  emu::wgmma_mma_async(emu::MmaOperand::BF16, 8, acc, fa, __cvta_generic_to_shared(shared) >> 4);
  emu::wgmma_commit_group();
  emu::wgmma_wait_group(0);
  out[threadIdx.x] = acc[0];
}

// Warp 3 of the warpgroup skips the wgmma that the other three issue (it still fences, commits and
// waits): on the GPU the warpgroup's MMA would hang or read garbage.
__global__ void wgmma_warpgroup_divergent_kernel(float* out) {
  RCM_DYNAMIC_SHARED(unsigned char, shared);
  float acc[4] = {};
  const std::uint32_t fa[4] = {};
  emu::wgmma_fence();
  if (threadIdx.x / 32 != 3) {
    emu::wgmma_mma_async(emu::MmaOperand::BF16, 8, acc, fa, __cvta_generic_to_shared(shared) >> 4);
  }
  emu::wgmma_commit_group();
  emu::wgmma_wait_group(0);
  out[threadIdx.x] = acc[0];
}

// B of a bf16 m64n8k16 wgmma (256 bytes: two core matrices along k, LBO 128) copied into shared memory
// with cp.async by 16 threads, 16 bytes each, waited for, fenced for the async proxy when `fence`, then
// a barrier and the wgmma of A = 1: every accumulator is the sum of its column of B.
__global__ void wgmma_async_b_kernel(const std::uint16_t* b_image, bool fence, float* out) {
  RCM_DYNAMIC_SHARED(unsigned char, shared);
  if (threadIdx.x < 16) __pipeline_memcpy_async(shared + 16 * threadIdx.x, b_image + 8 * threadIdx.x, 16);
  __pipeline_commit();
  __pipeline_wait_prior(0);
  if (fence) emu::fence_proxy_async_shared();
  __syncthreads();
  float acc[4] = {};
  const std::uint32_t ones[4] = {0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};  // bf16 1.0 pairs
  emu::wgmma_fence();
  emu::wgmma_mma_async(emu::MmaOperand::BF16, 8, acc, ones,
                       (__cvta_generic_to_shared(shared) >> 4) | (std::uint64_t{128 >> 4} << 16) |
                           (std::uint64_t{256 >> 4} << 32));
  emu::wgmma_commit_group();
  emu::wgmma_wait_group(0);
  for (int r = 0; r < 4; ++r) out[4 * threadIdx.x + r] = acc[r];
}

void check_wgmma_async_b(bool fence) {
  const std::vector<std::uint16_t> b_image(128, 0x3f80);  // B = 1 (bf16): every column sums to 16
  std::vector<float> out(4 * 128);
  emu::launch(emu::Mode::BlockByBlock, 1, 128, 256, wgmma_async_b_kernel, b_image.data(), fence, out.data());
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (out[i] != 16.0f) {
      std::fprintf(stderr, "wgmma_b_fenced: accumulator %zu = %g, want 16\n", i, static_cast<double>(out[i]));
      ++g_failures;
      return;
    }
  }
}

// mma.sync from half of the warp only.
__global__ void mma_sync_divergent_kernel(float* out) {
  float acc[4] = {};
  const std::uint32_t fa[4] = {}, fb[2] = {};
  if (threadIdx.x < 16) emu::mma_m16n8_sync(emu::MmaOperand::BF16, acc, fa, fb);
  out[threadIdx.x] = acc[0];
}

void case_mma_sync_divergent() {
  std::vector<float> out(32);
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 0, mma_sync_divergent_kernel, out.data());
}

// Each lane writes a word of shared memory and reads its neighbour's, with one warp collective in
// between: only __syncwarp orders the two (a shuffle or an mma.sync waits for the warp but orders
// no memory, so with either the read races with the write).
enum class WarpStep { Shuffle, MmaSync, Syncwarp };

template <WarpStep kStep>
__global__ void neighbour_across_warp_step_kernel(float* out) {
  RCM_DYNAMIC_SHARED(float, words);
  const unsigned lane = threadIdx.x;
  words[lane] = static_cast<float>(lane);
  float extra = 0.0f;
  if constexpr (kStep == WarpStep::Shuffle) {
    extra = __shfl_xor_sync(0xffffffffu, 0.0f, 1);
  } else if constexpr (kStep == WarpStep::MmaSync) {
    float acc[4] = {};
    const std::uint32_t fa[4] = {}, fb[2] = {};
    emu::mma_m16n8_sync(emu::MmaOperand::BF16, acc, fa, fb);
    extra = acc[0];
  } else {
    __syncwarp();
  }
  out[lane] = words[(lane + 1) % 32] + extra;
}

template <WarpStep kStep>
void case_neighbour_across_warp_step() {
  std::vector<float> out(32);
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 32 * sizeof(float), neighbour_across_warp_step_kernel<kStep>,
              out.data());
  for (unsigned lane = 0; lane < 32; ++lane) EXPECT(out[lane] == static_cast<float>((lane + 1) % 32));
}

// ---------------------------------------------------------------------------------------------
// Asynchronous copies (cp.async through the pipeline primitives).

// The 128 bytes of shared memory each thread of async_copy_kernel fills from 128 bytes of source.
struct alignas(16) AsyncSlot {
  unsigned char bytes[128];
};

// The kernel fills its slot with this first, so that the poison it sees later is the copies' own.
constexpr unsigned char kAsyncBefore = 0x5a;

// Byte i of a filled slot: the copies of async_copy_kernel, zero fills included, and kAsyncBefore in
// the gaps between them.
__host__ __device__ unsigned char async_slot_byte(const AsyncSlot& src, int i) {
  if (i < 44 || (i >= 64 && i < 76) || (i >= 80 && i < 84) || (i >= 96 && i < 116)) return src.bytes[i];
  if ((i >= 48 && i < 64) || (i >= 76 && i < 80) || (i >= 84 && i < 88)) return 0;
  return kAsyncBefore;
}

// Copies of every size into the thread's slot in four groups, the fourth committed late, and one
// empty group. Checks what the emulator promises in between: a completed group holds its data, a
// group not yet waited for reads as the 0xFF poison. Then each thread hands on its neighbour's slot.
__global__ void async_copy_kernel(const AsyncSlot* in, const void* in_end, AsyncSlot* out, int* flags) {
  RCM_DYNAMIC_SHARED(AsyncSlot, slots);
  const unsigned t = threadIdx.x;
  const unsigned g = blockIdx.x * blockDim.x + t;
  unsigned char* dst = slots[t].bytes;
  const unsigned char* src = in[g].bytes;
  for (unsigned char& b : slots[t].bytes) b = kAsyncBefore;
  __pipeline_memcpy_async(dst, src, 16);
  __pipeline_memcpy_async(dst + 16, src + 16, 16);
  __pipeline_memcpy_async(dst + 32, src + 32, 8);
  __pipeline_memcpy_async(dst + 40, src + 40, 4);
  __pipeline_commit();
  // A whole zero fill reads nothing: its source, one past the end of `in`, would be an ASan report.
  __pipeline_memcpy_async(dst + 48, in_end, 16, 16);
  __pipeline_memcpy_async(dst + 64, src + 64, 16, 4);
  __pipeline_memcpy_async(dst + 80, src + 80, 8, 4);
  __pipeline_commit();
  __pipeline_memcpy_async(dst + 96, src + 96, 16);
  __pipeline_commit();
  __pipeline_memcpy_async(dst + 112, src + 112, 4);
  const auto holds = [&](int begin, int end) {
    for (int i = begin; i < end; ++i) {
      if (dst[i] != async_slot_byte(in[g], i)) return false;
    }
    return true;
  };
  const auto poisoned = [&](int begin, int end) {
    for (int i = begin; i < end; ++i) {
      if (dst[i] != 0xff) return false;
    }
    return true;
  };
  int f = 0;
  __pipeline_wait_prior(1);  // the first two groups; neither the third nor the open batch
  if (holds(0, 96) && poisoned(96, 116)) f |= 1;
  __pipeline_commit();
  __pipeline_commit();       // an empty group counts as one, and may be left pending at exit
  __pipeline_wait_prior(2);  // the third group only
  if (holds(0, 112) && poisoned(112, 116)) f |= 2;
  __pipeline_wait_prior(1);
  if (holds(0, 128)) f |= 4;
  flags[g] = f;
  __syncthreads();
  out[g] = slots[(t + 1) % blockDim.x];
}

void case_async_copy() {
  for (const emu::Mode mode : {emu::Mode::BlockByBlock, emu::Mode::AllBlocks}) {
    constexpr unsigned blocks = 2, threads = 64, n = blocks * threads;
    static AsyncSlot in[n], out[n];
    static int flags[n];
    for (unsigned g = 0; g < n; ++g) {
      for (unsigned i = 0; i < 128; ++i) in[g].bytes[i] = static_cast<unsigned char>((g * 7 + i) % 251);
      std::memset(out[g].bytes, 0, 128);
      flags[g] = 0;
    }
    emu::launch(mode, blocks, threads, threads * sizeof(AsyncSlot), async_copy_kernel, in,
                static_cast<const void*>(in + n), out, flags);
    for (unsigned g = 0; g < n; ++g) {
      EXPECT_EQ(flags[g], 7);
      const unsigned neighbour = g - g % threads + (g + 1) % threads;
      for (int i = 0; i < 128; ++i) {
        if (out[g].bytes[i] != async_slot_byte(in[neighbour], i)) {
          std::fprintf(stderr, "%s: thread %u, byte %d of its neighbour's slot: %u, want %u\n", emu::mode_name(mode),
                       g, i, out[g].bytes[i], async_slot_byte(in[neighbour], i));
          ++g_failures;
          break;
        }
      }
    }
  }
}

// Thread t copies 16 bytes into its slot; thread t + 1 reads them after a __syncthreads. The data
// lands at the issuer's __pipeline_wait_prior, which the planted bug calls after the barrier.
template <bool kWaitBeforeBarrier>
__global__ void async_neighbour_kernel(const float* in, float* out, int* poisoned_reads, int* read_done) {
  RCM_DYNAMIC_SHARED(float, tile);
  const unsigned t = threadIdx.x, n = blockDim.x;
  const unsigned from = (t + n - 1) % n;
  __pipeline_memcpy_async(tile + 4 * t, in + 4 * t, 16);
  __pipeline_commit();
  if constexpr (kWaitBeforeBarrier) __pipeline_wait_prior(0);
  __syncthreads();
  bool poison = false;
  for (unsigned i = 0; i < 4; ++i) {
    out[4 * t + i] = tile[4 * from + i];
    poison = poison || std::isnan(out[4 * t + i]);
  }
  if (poison) atomicAdd(poisoned_reads, 1);
  if constexpr (!kWaitBeforeBarrier) {
    // Hold the wait until the reader has read, so that it reads the poison on every run, not only
    // when it wins the race; the flags are relaxed atomics, no happens-before edge to hide the race.
    atomicExch(read_done + from, 1);
    while (atomicAdd(read_done + t, 0) == 0) std::this_thread::yield();
    __pipeline_wait_prior(0);
  }
}

template <bool kWaitBeforeBarrier>
void case_async_neighbour() {
  constexpr unsigned threads = 64;
  alignas(16) static float in[4 * threads];
  std::iota(in, in + 4 * threads, 1.0f);
  std::vector<float> out(4 * threads);
  std::vector<int> read_done(threads, 0);
  int poisoned_reads = 0;
  emu::launch(emu::Mode::BlockByBlock, 1, threads, sizeof in, async_neighbour_kernel<kWaitBeforeBarrier>, in,
              out.data(), &poisoned_reads, read_done.data());
  EXPECT_EQ(poisoned_reads, 0);
  if (kWaitBeforeBarrier) {
    for (unsigned t = 0; t < threads; ++t) {
      for (unsigned i = 0; i < 4; ++i) EXPECT(out[4 * t + i] == in[4 * ((t + threads - 1) % threads) + i]);
    }
  }
}

// Issues and commits, but never waits: the copy would never reach shared memory.
__global__ void async_copy_unwaited_kernel(const float* in) {
  RCM_DYNAMIC_SHARED(float, tile);
  __pipeline_memcpy_async(tile + 4 * threadIdx.x, in + 4 * threadIdx.x, 16);
  __pipeline_commit();
}

void case_async_copy_pending_at_exit() {
  alignas(16) static float in[4 * 32];
  emu::launch(emu::Mode::BlockByBlock, 1, 32, sizeof in, async_copy_unwaited_kernel, in);
}

// Destinations cp.async cannot take: global memory, and shared memory one float off the 16-byte
// alignment of the copy (inside the buffer, which has a float to spare, so only the alignment is wrong).
template <bool kGlobal>
__global__ void async_copy_bad_destination_kernel(const float* in, float* out) {
  RCM_DYNAMIC_SHARED(float, tile);
  float* dst = kGlobal ? out + 4 * threadIdx.x : tile + 4 * threadIdx.x + 1;
  __pipeline_memcpy_async(dst, in + 4 * threadIdx.x, 16);
  __pipeline_commit();
  __pipeline_wait_prior(0);
}

template <bool kGlobal>
void case_async_copy_bad_destination() {
  alignas(16) static float in[4 * 32], out[4 * 32];
  emu::launch(emu::Mode::BlockByBlock, 1, 32, sizeof in + sizeof(float), async_copy_bad_destination_kernel<kGlobal>, in,
              out);
}

// 16-byte vector loads and stores of the kernels' vector16.cuh, from a base one float off 16 bytes or
// not: memcpy, their host branch, would move the bytes either way; the GPU faults on the first.
template <bool kAligned>
__global__ void vector_copy_kernel(const float* in, float* out) {
  const int first = kAligned ? 0 : 1;
  rcm_fsad::kernels::store16(out + 4 * threadIdx.x, rcm_fsad::kernels::load16<float>(in + first + 4 * threadIdx.x));
}

template <bool kAligned>
void case_vector_copy() {
  alignas(16) static float in[4 * 32 + 1], out[4 * 32];
  std::iota(in, in + 4 * 32 + 1, 0.0f);
  emu::launch(emu::Mode::BlockByBlock, 1, 32, 0, vector_copy_kernel<kAligned>, in, out);
  for (int i = 0; i < 4 * 32; ++i) EXPECT_EQ(out[i], in[i]);
}

const std::map<std::string, void (*)()>& cases() {
  static const std::map<std::string, void (*)()> table = {
      {"builtins", case_builtins},
      {"shuffles", case_shuffles},
      {"partial_warp", case_partial_warp},
      {"block_reduction", case_block_reduction},
      {"dynamic_shared", case_dynamic_shared},
      {"uninitialised_shared", case_uninitialised_shared},
      {"atomics", case_atomics},
      {"half_types", case_half_types},
      {"shared_race", case_shared_neighbour<false>},
      {"shared_race_fixed", case_shared_neighbour<true>},
      {"oob_read", case_neighbour_sum<false>},
      {"oob_read_fixed", case_neighbour_sum<true>},
      {"block_scatter_race", case_histogram<false>},
      {"block_scatter_atomic", case_histogram<true>},
      {"divergent_barrier", case_early_exit_barrier<false>},
      {"uniform_barrier", case_early_exit_barrier<true>},
      {"divergent_barrier_late", case_divergent_barrier_late},
      {"divergent_barrier_sites", case_divergent_barrier_sites},
      {"divergent_shuffle", case_lane_sum<false>},
      {"uniform_shuffle", case_lane_sum<true>},
      {"hang", case_hang},
      {"wmma", case_wmma},
      {"wmma_store_race", case_wmma_store_read<false>},
      {"wmma_store_synced", case_wmma_store_read<true>},
      {"wmma_staging_reuse_race", case_wmma_staging_reuse<false>},
      {"wmma_staging_reuse_synced", case_wmma_staging_reuse<true>},
      {"wmma_load_race", case_wmma_load_after_writes<false, false>},
      {"wmma_load_synced", case_wmma_load_after_writes<true, false>},
      {"wmma_accumulator_load_race", case_wmma_load_after_writes<false, true>},
      {"wmma_accumulator_load_synced", case_wmma_load_after_writes<true, true>},
      {"wmma_misaligned", case_wmma_misaligned},
      {"wmma_divergent", case_wmma_divergent},
      {"mma_sync", case_mma_sync},
      {"mma_sync_divergent", case_mma_sync_divergent},
      {"wgmma", case_wgmma},
      {"wgmma_pending_at_exit", case_one_warpgroup<wgmma_pending_at_exit_kernel>},
      {"wgmma_swizzled", case_one_warpgroup<wgmma_swizzled_kernel>},
      {"wgmma_a_changed", case_one_warpgroup<wgmma_a_changed_kernel>},
      {"wgmma_unfenced", case_one_warpgroup<wgmma_unfenced_kernel>},
      {"wgmma_warpgroup_divergent", case_one_warpgroup<wgmma_warpgroup_divergent_kernel>},
      {"wgmma_b_fenced", [] { check_wgmma_async_b(true); }},
      {"wgmma_b_unfenced", [] { check_wgmma_async_b(false); }},
      {"shuffle_orders_nothing", case_neighbour_across_warp_step<WarpStep::Shuffle>},
      {"mma_sync_orders_nothing", case_neighbour_across_warp_step<WarpStep::MmaSync>},
      {"syncwarp_orders", case_neighbour_across_warp_step<WarpStep::Syncwarp>},
      {"async_copy", case_async_copy},
      {"async_copy_unwaited_race", case_async_neighbour<false>},
      {"async_copy_waited", case_async_neighbour<true>},
      {"async_copy_pending_at_exit", case_async_copy_pending_at_exit},
      {"async_copy_to_global", case_async_copy_bad_destination<true>},
      {"async_copy_misaligned", case_async_copy_bad_destination<false>},
      {"vector_aligned", case_vector_copy<true>},
      {"vector_misaligned", case_vector_copy<false>},
  };
  return table;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <case> | --list\n", argv[0]);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--list") {
    for (const auto& [n, fn] : cases()) std::printf("%s\n", n.c_str());
    return 0;
  }
  const auto it = cases().find(name);
  if (it == cases().end()) {
    std::fprintf(stderr, "unknown case '%s'\n", name.c_str());
    return 2;
  }
  it->second();
  if (g_failures != 0) {
    std::printf("FAIL %s: %d check(s) failed\n", name.c_str(), g_failures);
    return 1;
  }
  std::printf("PASS %s\n", name.c_str());
  return 0;
}
