// Hopper's asynchronous warpgroup MMA (wgmma, sm_90a) for the implicit-GEMM forward of DCNv2 in
// float16 and bfloat16, where the mma.sync kernel applies (mma_kernel_applies). It keeps that
// kernel's sampling (each thread blends its 16 bytes of channels of two rows into the A fragment
// words, which wgmma takes from registers in mma.m16n8k16's layout) and changes how it multiplies:
//   * a warpgroup (4 warps, 64 rows) multiplies its rows by all the block's columns (64, 128 or 256:
//     the conv group's output channels up to 256) with wgmma, B read by the tensor cores straight
//     from shared memory: no weight fragments in registers, no shared-memory loads of them, and one
//     instruction per 16 x kCols x 64 multiply-adds instead of kCols / 8 mma.sync;
//   * the MMAs run asynchronously: a step's two wgmma are issued, then the warps blend the next
//     step's A fragments and issue the loads of the step after it, then wait for the MMAs. Corner
//     vectors are loaded a whole step before they are blended, so the loads' latency hides behind a
//     step of MMAs and sampling instead of stalling the warp;
//   * each element is sampled once (the block spans the group's columns up to 256), with no trading
//     of rows between warps;
//   * the weights are repacked beforehand as the image of a block's step in shared memory
//     (deform_conv2d_wgmma_weight_tiles_kernel: B K-major, core matrices of 8 output channels x 16
//     bytes), which the block copies with cp.async into the stage that the MMAs do not read;
//   * one barrier per step: the next step's weights have landed (each thread fences its copies for
//     the tensor cores' reads, fence.proxy.async), and every warpgroup has finished the MMAs that
//     read the stage they overwrite.
// Two warpgroups a block, one block per SM (accumulators: kCols / 2 registers a thread).
// Torch-free: launched by csrc/cuda/deform_conv2d_cuda.cu and by the CPU emulation harness; its
// body is empty where wgmma is not compiled (RCM_WGMMA_AVAILABLE: sm_90a), which the launcher
// checks at run time (wgmma_code_loaded).
#pragma once

#include <type_traits>

#include "async_copy.cuh"
#include "deform_conv2d_implicit_gemm_mma.cuh"
#include "deform_conv2d_tile_corners.cuh"
#include "vector16.cuh"
#include "wgmma.cuh"

namespace rcm_fsad {
namespace kernels {

// kCols_: the block's output channels, the N of its wgmma (64, 128 or 256). Eight warps (two
// warpgroups), 16 rows each.
template <int kCols_>
struct WgmmaTiles {
  static constexpr int kCols = kCols_;
  static constexpr int kWarps = 8;
  static constexpr int kWarpRows = 16;
  static constexpr int kRows = kWarpRows * kWarps;  // 64 a warpgroup
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlocksPerSM = 1;
};

// The block width for a conv group of `cog` output channels: as wide as the group, up to 256.
RCM_HD int wgmma_tile_cols(int64_t cog) { return cog > 128 ? 256 : cog > 64 ? 128 : 64; }

// f(WgmmaTiles<wgmma_tile_cols(cog)>{}): the one place that turns the width into the kernel's
// template argument.
template <typename F>
decltype(auto) with_wgmma_tiles(int64_t cog, F&& f) {
  switch (wgmma_tile_cols(cog)) {
    case 256: return f(WgmmaTiles<256>{});
    case 128: return f(WgmmaTiles<128>{});
    default: return f(WgmmaTiles<64>{});
  }
}

// The column blocks of a conv group of `cog` output channels.
RCM_HD int64_t wgmma_column_blocks(int64_t cog) {
  const int64_t cols = wgmma_tile_cols(cog);
  return (cog + cols - 1) / cols;
}

// The weights as the image of each block's step in shared memory: for conv group G, kernel point k,
// step s of the point (mma_steps_per_point), column block b, MMA m of the step's two, half h of its
// 16-deep reduction and output channel n of the block (kCols = wgmma_tile_cols), 8 elements: those
// of the MMA's k = 8 h .. 8 h + 7 for output channel kCols b + n. The MMA's k follows the A
// fragments' order (to_a_fragments): k = 8 h + e is channel c0 + 8 (e / 2) + 4 m + 2 h + e % 2 of
// the step; zeros past its depth and the group's output channels.
// Shape (G, K, mma_steps_per_point, wgmma_column_blocks, 2, 2, kCols, 8).
template <typename scalar_t>
RCM_HD int64_t wgmma_weight_tile_elements(const DeformConvGeometry& g) {
  const int64_t cog = g.out_channels / g.groups;
  return g.groups * g.kernel_points() * mma_steps_per_point<scalar_t>(g) * wgmma_column_blocks(cog) * 4 *
         wgmma_tile_cols(cog) * Vector16<scalar_t>::kSize;
}

// Dynamic shared memory of the kernel below: each warp's corners of its 16 rows; two stages of the
// block's weights (the step being multiplied, and the next one in flight), [stage][m][h][n]: for
// MMA m, B's two core matrices along k kCols x 16 bytes apart, those along n 128 bytes apart.
// 36 KB 256 wide.
template <int kCols>
struct WgmmaShared {
  static constexpr int kStages = 2;
  RowCorners corners[WgmmaTiles<kCols>::kWarps][WgmmaTiles<kCols>::kWarpRows];
  Vector16<uint32_t> weights[kStages][2][2][kCols];
};

template <int kCols>
constexpr size_t wgmma_shared_bytes() {
  return sizeof(WgmmaShared<kCols>);
}

// The weight tiles above from wmat: (C_out, K, C_g), weight_matrix()'s layout, into `tiles`
// (wgmma_weight_tile_elements<scalar_t>(g) elements), one 16-byte vector per thread of a
// grid-stride loop. For geometries with mma_steps_per_point<scalar_t>(g) > 0; 16-bit types.
template <typename scalar_t>
__global__ void deform_conv2d_wgmma_weight_tiles_kernel(DeformConvGeometry g, const scalar_t* __restrict__ wmat,
                                                        scalar_t* __restrict__ tiles) {
  constexpr int kVector = Vector16<scalar_t>::kSize;
  static_assert(kVector == 8, "16-bit types: a core matrix row is 8 of the MMA's k");
  const int64_t steps = mma_steps_per_point<scalar_t>(g);
  const int64_t cog = g.out_channels / g.groups;
  const int64_t cg = g.channels_per_group();
  const int64_t points = g.kernel_points();
  const int64_t cols = wgmma_tile_cols(cog);
  const int64_t blocks = wgmma_column_blocks(cog);
  const int64_t vectors = wgmma_weight_tile_elements<scalar_t>(g) / kVector;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < vectors; v += stride) {
    const int64_t n = v % cols;
    const int h = static_cast<int>(v / cols % 2);
    const int m = static_cast<int>(v / (2 * cols) % 2);
    const int64_t block = v / (4 * cols) % blocks;
    const int64_t step = v / (4 * cols * blocks) % steps;
    const int64_t k = v / (4 * cols * blocks * steps) % points;
    const int64_t group = v / (4 * cols * blocks * steps * points);
    ReductionSteps<mma_step_depth<scalar_t>()> s(g, group, {static_cast<int>(k), static_cast<int>(k) + 1});
    for (int64_t i = 0; i < step; ++i) s.next();
    const int64_t co = block * cols + n;
    const Vector16<uint32_t> zeros{};
    Vector16<scalar_t> x = load16<scalar_t>(&zeros);
    RCM_UNROLL
    for (int e = 0; e < kVector; ++e) {
      const int c = 8 * (e / 2) + 4 * m + 2 * h + e % 2;  // of the step's channels
      if (co < cog && c < s.depth) x.v[e] = wmat[((group * cog + co) * points + k) * cg + (s.c0 + c - group * cg)];
    }
    store16(tiles + v * kVector, x);
  }
}

// Grid: (gemm_grid_x<T::kRows, kCols>(g), splits, groups) with T = WgmmaTiles<kCols>; block:
// T::kThreads; dynamic shared memory: wgmma_shared_bytes<kCols>(). scalar_t and mma_t: c10::Half
// with __half, c10::BFloat16 with __nv_bfloat16; the arguments as for the mma.sync kernel, but the
// weights come as tiles (deform_conv2d_wgmma_weight_tiles_kernel). The launcher guarantees input
// and tiles 16-byte aligned, mma_kernel_applies<scalar_t>(g) and kCols = wgmma_tile_cols(C_out / G).
template <typename scalar_t, typename mma_t, int kCols>
__global__ void __launch_bounds__(WgmmaTiles<kCols>::kThreads, WgmmaTiles<kCols>::kBlocksPerSM)
    deform_conv2d_implicit_gemm_wgmma_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                                             const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                                             const scalar_t* __restrict__ mask, FieldStrides mask_strides,
                                             const scalar_t* __restrict__ tiles, const scalar_t* __restrict__ bias,
                                             scalar_t* __restrict__ out, float* __restrict__ partials) {
#if defined(RCM_WGMMA_AVAILABLE)
  using T = WgmmaTiles<kCols>;
  using Steps = ReductionSteps<mma_step_depth<scalar_t>()>;
  constexpr int kVector = Vector16<scalar_t>::kSize;
  static_assert(kVector == 8, "16-bit types");

  RCM_DYNAMIC_SHARED(WgmmaShared<kCols>, shared);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int quad = lane / 4;  // the thread's rows of the warp's 16: quad and quad + 8
  const int t = lane % 4;     // its 16 bytes of a step's channels
  const GemmTile tile = gemm_tile<T::kRows, kCols>(g, blockIdx.x);
  const int64_t row0 = tile.row0 + warp * T::kWarpRows;
  const int64_t rows = g.batch * g.out_pixels();
  const int64_t cog = g.out_channels / g.groups;
  const int64_t group = blockIdx.z;
  const uint32_t pixel_bytes = static_cast<uint32_t>(g.channels * sizeof(scalar_t));  // < 2^32: mma_kernel_applies
  RowCorners* corners = shared->corners[warp];

  float acc[kCols / 2];
  RCM_UNROLL
  for (int i = 0; i < kCols / 2; ++i) acc[i] = 0.0f;

  // Lane r < 16 computes the corners of row r of the warp's 16, for the whole reduction, and loads
  // the field (offset and mask) of the next run it starts when the run before it starts.
  const bool row_live = lane < T::kWarpRows && row0 + lane < rows;
  const OutputPixel px = row_live ? output_pixel(g, row0 + lane) : OutputPixel{0, 0, 0};
  auto load_field = [&](int k, int og) {
    return sample_field<float>(g, px, k, og, offset, offset_strides, mask, mask_strides);
  };
  SampleField<float> field{};
  // The corners of the warp's rows for the run that step s begins, from `field`, which then
  // becomes the field of the run after it. Rows are read from the corners only when their step's
  // loads are issued (fetch): a run may start while the step before it is still to be blended.
  auto start_run = [&](const Steps& s) {
    __syncwarp();  // every lane is done reading the previous run's corners
    if (lane < T::kWarpRows) corners[lane].set(row_live ? masked_corners_of<float>(g, px, s.k, field) : no_corners<float>());
    __syncwarp();
    const typename Steps::Run after = s.following_run();
    if (row_live && after.k < s.points) field = load_field(after.k, after.og);
  };

  // A step's corner vectors of the thread's two rows (quad + 8 h), in flight from fetch to blend,
  // with their weights (read with the pixels, so that the next run's corners may replace them).
  struct Fetched {
    Vector16<scalar_t> raw[2][4];
    Vector16<float> weight[2];
    bool live;  // the thread's 16 bytes are within the step's depth
  };
  auto fetch = [&](const Steps& s, Fetched& f) {
    f.live = t * kVector < s.depth;
    const char* at = reinterpret_cast<const char*>(input + (s.c0 + t * kVector));
    RCM_UNROLL
    for (int h = 0; h < 2; ++h) {
      const RowCorners& c = corners[quad + 8 * h];
      f.weight[h] = load16<float>(c.weight);
      fetch_corner_vectors(at, load16<int32_t>(c.pixel), pixel_bytes, f.live, f.raw[h]);
    }
  };
  // The step's A fragments (a[m]: its MMA m) from the fetched corner vectors.
  auto blend = [&](const Fetched& f, uint32_t (&a)[2][4]) {
    uint32_t w[2][1][4];
    RCM_UNROLL
    for (int h = 0; h < 2; ++h) blend_corner_vectors<mma_t>(f.weight[h], f.raw[h], f.live, w[h]);
    uint32_t fragments[1][2][4];
    to_a_fragments(w, fragments);
    RCM_UNROLL
    for (int m = 0; m < 2; ++m) {
      RCM_UNROLL
      for (int i = 0; i < 4; ++i) a[m][i] = fragments[0][m][i];
    }
  };

  // The block's weights of a step: its image at b (kVector-element vectors), copied flat into stage
  // `stage` by all its threads, 16 bytes at a time.
  constexpr int kStepVectors = 4 * kCols;
  constexpr int kCopies = kStepVectors / T::kThreads;  // per thread and step
  static_assert(kCopies * T::kThreads == kStepVectors, "the block's threads share its weight copies evenly");
  const int64_t step_stride = wgmma_column_blocks(cog) * kStepVectors * kVector;
  auto copy_weights = [&](const scalar_t* b, int stage) {
    RCM_UNROLL
    for (int n = 0; n < kCopies; ++n) {
      const int chunk = threadIdx.x + n * T::kThreads;
      copy16_async(&shared->weights[stage][chunk / (2 * kCols)][chunk / kCols % 2][chunk % kCols], b + chunk * kVector,
                   true);
    }
    commit_async_copies();
  };
  // The step's MMAs on stage `stage`, issued for the warpgroup: its two 16-deep ones.
  auto multiply = [&](const uint32_t (&a)[2][4], int stage) {
    RCM_UNROLL
    for (int i = 0; i < kCols / 2; ++i) wgmma_fence_operand(acc[i]);
    wgmma_fence();
    RCM_UNROLL
    for (int m = 0; m < 2; ++m) {
      wgmma_m64k16<kCols, mma_t>(acc, a[m], wgmma_descriptor(&shared->weights[stage][m][0][0], kCols * 16, 128));
    }
    wgmma_commit_group();
  };
  // Waits for the step's MMAs; a, their A fragments, stays live until then (else the compiler may
  // give the next step's fragments its registers while the tensor cores still read them).
  auto wait_multiply = [&](uint32_t (&a)[2][4]) {
    wgmma_wait_group<0>();
    RCM_UNROLL
    for (int i = 0; i < kCols / 2; ++i) wgmma_fence_operand(acc[i]);
    RCM_UNROLL
    for (int m = 0; m < 2; ++m) {
      RCM_UNROLL
      for (int i = 0; i < 4; ++i) wgmma_fence_operand(a[m][i]);
    }
  };
  // The step's weights, copied by every thread, landed and visible to the tensor cores' reads.
  auto weights_landed = [] {
    wait_async_copies<0>();
    wgmma_fence_shared_writes();
    __syncthreads();
  };

  Steps s(g, group, kernel_point_range(g, blockIdx.y, gridDim.y));
  if (!s.done()) {  // the same for the whole block, as every barrier below
    const scalar_t* b =
        tiles + ((group * g.kernel_points() + s.k) * mma_steps_per_point<scalar_t>(g) * wgmma_column_blocks(cog) +
                 tile.co0 / kCols) * kStepVectors * kVector;
    int stage = 0;
    copy_weights(b, stage);
    if (row_live) field = load_field(s.k, s.og);
    start_run(s);
    Fetched f;
    fetch(s, f);
    uint32_t a[2][4];
    blend(f, a);
    Steps next = s;
    next.next();
    if (!next.done()) {
      if (next.first_of_run) start_run(next);
      fetch(next, f);
    }
    weights_landed();
    for (;;) {
      multiply(a, stage);
      const bool more = !next.done();
      Steps after = next;
      uint32_t a_next[2][4];
      if (more) {
        // Every warpgroup has waited for the MMAs of the step before, the last to read this stage.
        b += step_stride;
        copy_weights(b, stage ^ 1);
        blend(f, a_next);
        after.next();
        if (!after.done()) {
          if (after.first_of_run) start_run(after);
          fetch(after, f);
        }
      }
      wait_multiply(a);
      if (!more) break;
      RCM_UNROLL
      for (int m = 0; m < 2; ++m) {
        RCM_UNROLL
        for (int i = 0; i < 4; ++i) a[m][i] = a_next[m][i];
      }
      next = after;
      stage ^= 1;
      weights_landed();
    }
  }

  // D: rows quad + 8 h of the warp's 16, output channels 8 j + 2 t and 8 j + 2 t + 1 (acc[4 j + 2 h]
  // and the next).
  const GemmTile origin = gemm_tile_recomputed<T::kRows, kCols>(g);
  RCM_UNROLL
  for (int j = 0; j < kCols / 8; ++j) {
    const int64_t co = origin.co0 + 8 * j + 2 * t;
    if (co >= cog) continue;
    RCM_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int64_t row = origin.row0 + warp * T::kWarpRows + quad + 8 * h;
      if (row >= rows) continue;
      const float d[2] = {acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]};
      store_gemm_output_pair(g, rows, row, group, cog, co, d, bias, out, partials);
    }
  }
#endif  // RCM_WGMMA_AVAILABLE
}

}  // namespace kernels
}  // namespace rcm_fsad
