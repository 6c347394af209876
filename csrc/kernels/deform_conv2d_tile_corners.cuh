// What the implicit-GEMM forward kernels share: the grid and its split over kernel points, the
// steps of the reduction dimension, the sampling step, where for one (kernel point, offset group)
// the bilinear corners of every row of a tile of output pixels are computed once per row and then
// used for all the channels of the offset group, and the sum of a split forward's partials.
// Torch-free (see common.cuh).
#pragma once

#include "deform_conv2d_math.cuh"
#include "vector16.cuh"

namespace rcm_fsad {
namespace kernels {

// The grid of an implicit-GEMM forward: (row tiles x column tiles, 1, conv groups), the column
// tiles of a row tile in consecutive blocks, so that the input rows they all sample (each block
// samples its A tile for itself) are still in L2 for the second and later ones.
template <int kRows, int kCols>
RCM_HD int64_t gemm_grid_x(const DeformConvGeometry& g) {
  const int64_t cog = g.out_channels / g.groups;
  return (g.batch * g.out_pixels() + kRows - 1) / kRows * ((cog + kCols - 1) / kCols);
}

// Split-K over kernel points: when the tiles alone would leave SMs idle, the grid gets a y extent
// of `splits` and block y computes the kernel points kernel_point_range(g, y, splits), writing a
// partial sum that deform_conv2d_split_sum_kernel adds up.
struct KernelPointRange {
  int begin;
  int end;
};

// Split `split` of `splits` covers kernel points [split * per, min((split + 1) * per, K)),
// per = ceil(K / splits); forward_splits never makes a split empty.
RCM_HD KernelPointRange kernel_point_range(const DeformConvGeometry& g, uint32_t split, uint32_t splits) {
  // 32-bit: kernel points and splits are far below 2^31 (a kh x kw kernel), and 64-bit values
  // here cost the kernels registers for the whole reduction.
  const int points = static_cast<int>(g.kernel_points());
  const int per = (points + static_cast<int>(splits) - 1) / static_cast<int>(splits);
  return {static_cast<int>(split) * per, min_of(static_cast<int>(split + 1) * per, points)};
}

// How many kernel-point splits a forward grid of `blocks` blocks (every conv group's) gets on `sms`
// SMs that each hold `blocks_per_sm` of them: as many as fit in one wave with the unsplit grid's
// blocks (no split when those already fill it), at most one per kernel point and at most
// max_splits (the grid's y extent), and then the fewest that give every split the same number of
// kernel points as the most loaded one. (Capping after that last step could leave splits empty.)
RCM_HD int64_t forward_splits(int64_t blocks, int64_t sms, int64_t blocks_per_sm, int64_t kernel_points,
                              int64_t max_splits) {
  const int64_t wanted =
      min_of(min_of(kernel_points, max_splits), (sms * blocks_per_sm) / max_of<int64_t>(blocks, 1));
  if (wanted <= 1) return 1;
  const int64_t per = (kernel_points + wanted - 1) / wanted;
  return (kernel_points + per - 1) / per;
}

// The first output pixel (row) and output channel within the conv group of block x of that grid.
struct GemmTile {
  int64_t row0;
  int64_t co0;
};

// 32-bit division: the launcher keeps the grid below 2^31 blocks (64-bit division costs registers).
template <int kRows, int kCols>
RCM_HD GemmTile gemm_tile(const DeformConvGeometry& g, uint32_t block_x) {
  const uint32_t column_tiles = static_cast<uint32_t>((g.out_channels / g.groups + kCols - 1) / kCols);
  return {static_cast<int64_t>(block_x / column_tiles) * kRows, static_cast<int64_t>(block_x % column_tiles) * kCols};
}

// gemm_tile of the block, from blockIdx.x read anew (under nvcc a volatile read of %ctaid.x, which
// the compiler cannot merge with an earlier read): an epilogue after a long reduction recomputes
// its tile instead of holding it in registers through the reduction, which ptxas would rather spill.
template <int kRows, int kCols>
__device__ __forceinline__ GemmTile gemm_tile_recomputed(const DeformConvGeometry& g) {
#if defined(__CUDA_ARCH__)
  uint32_t block_x;
  asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(block_x));
#else
  const uint32_t block_x = blockIdx.x;
#endif
  return gemm_tile<kRows, kCols>(g, block_x);
}

// Lives in shared memory; kRows = the tile's output pixels. Structure of arrays (masked_corners
// per row), so that the threads of a warp, which read different rows, read consecutive words.
template <typename acc_t, int kRows>
struct TileCorners {
  int64_t pixel[4][kRows];  // corner's pixel index in the whole NHWC batch; -1 outside the image
  acc_t weight[4][kRows];   // bilinear weight times the mask

  __device__ __forceinline__ void set(int r, const MaskedCorners<acc_t>& c) {
    for (int i = 0; i < 4; ++i) {
      pixel[i][r] = c.pixel[i];
      weight[i][r] = c.weight[i];
    }
  }
};

// Fills row r of `corners` for the output pixel row0 + r (zeros past the last row).
template <typename acc_t, int kRows, typename scalar_t>
__device__ __forceinline__ void set_tile_corners(TileCorners<acc_t, kRows>& corners, int r,
                                                 const DeformConvGeometry& g, int64_t row0, int64_t k,
                                                 int64_t og, const scalar_t* offset, FieldStrides offset_strides,
                                                 const scalar_t* mask, FieldStrides mask_strides) {
  corners.set(r, masked_corners<acc_t>(g, row0 + r, k, og, offset, offset_strides, mask, mask_strides));
}

// The modulated sample of row r at `channel` (an absolute NHWC channel index).
template <typename acc_t, int kRows, typename scalar_t>
__device__ __forceinline__ acc_t sample_tile_row(const TileCorners<acc_t, kRows>& corners, int r,
                                                 const scalar_t* input, int64_t channels, int64_t channel) {
  acc_t v = acc_t(0);
  for (int i = 0; i < 4; ++i) {
    const int64_t pixel = corners.pixel[i][r];
    if (pixel >= 0) v += corners.weight[i][r] * static_cast<acc_t>(input[pixel * channels + channel]);
  }
  return v;
}

// The deepest reduction step of any kernel, and so the most channels ReductionSteps can count in
// 32 bits, which adds a step's depth to a channel index: the launcher checks C against it.
constexpr int kMaxStepDepth = 64;
constexpr int64_t kMaxReductionChannels = (int64_t(1) << 31) - 1 - kMaxStepDepth;

// The steps of the reduction of an implicit-GEMM block over conv group `group` and the kernel
// points of its split: for each kernel point k, the group's channels in runs that stay in one
// offset group og (one sample point per row), each run cut into steps of at most kDepth channels:
// [c0, c0 + depth), c0 an absolute channel.
//   for (ReductionSteps<kDepth> s(g, group, kernel_point_range(g, blockIdx.y, gridDim.y)); !s.done();
//        s.next()) { if (s.first_of_run) ... }
template <int kDepth>
struct ReductionSteps {
  static_assert(kDepth <= kMaxStepDepth, "kMaxReductionChannels assumes steps of at most kMaxStepDepth");
  // 32-bit (the launcher checks C <= kMaxReductionChannels): these live through the whole
  // reduction, and 64-bit ones took the tensor-core kernel 10 registers more.
  int group_begin, group_end, channels_per_offset_group;
  int points;
  int k = 0;
  int og = 0, run_end = 0, c0 = 0;
  int depth = 0;
  bool first_of_run = true;

  __device__ __forceinline__ ReductionSteps(const DeformConvGeometry& g, int64_t group, KernelPointRange range)
      : group_begin(static_cast<int>(group * g.channels_per_group())),
        group_end(static_cast<int>((group + 1) * g.channels_per_group())),
        channels_per_offset_group(static_cast<int>(g.channels_per_offset_group())),
        points(range.end),
        k(range.begin) {
    start_run(group_begin);
  }
  __device__ __forceinline__ bool done() const { return k == points; }
  // Whether this step is the last of its run, and the kernel point and offset group of the run
  // after it (k == points: none), for a block that prepares a run's corners ahead of its steps.
  __device__ __forceinline__ bool ends_run() const { return c0 + kDepth >= run_end; }
  struct Run {
    int k;
    int og;
  };
  __device__ __forceinline__ Run following_run() const {
    return run_end < group_end ? Run{k, og + 1} : Run{k + 1, group_begin / channels_per_offset_group};
  }
  __device__ __forceinline__ void next() {
    c0 += kDepth;
    first_of_run = false;
    if (c0 < run_end) {
      depth = min_of(kDepth, run_end - c0);
    } else if (run_end < group_end) {
      start_run(run_end);
    } else {
      ++k;
      start_run(group_begin);
    }
  }

 private:
  __device__ __forceinline__ void start_run(int begin) {
    og = begin / channels_per_offset_group;
    run_end = min_of((og + 1) * channels_per_offset_group, group_end);
    c0 = begin;
    depth = min_of(kDepth, run_end - c0);
    first_of_run = true;
  }
};

// Where an implicit-GEMM block puts its sums for output pixel `row` and the kCount output channels
// from `channel` (absolute), with one store: with partials (a split forward), into its split's
// partial sums, without the bias (deform_conv2d_split_sum_kernel finishes); otherwise into out,
// with the bias. row * C_out + channel must be a multiple of kCount (out and partials are then
// aligned to kCount elements there).
template <int kCount, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_gemm_outputs(const DeformConvGeometry& g, int64_t rows, int64_t row,
                                                   int64_t channel, const acc_t (&sums)[kCount],
                                                   const scalar_t* bias, scalar_t* out, acc_t* partials) {
  const int64_t at = row * g.out_channels + channel;
  if (partials != nullptr) {
    Elements<acc_t, kCount> x;
    RCM_UNROLL
    for (int e = 0; e < kCount; ++e) x.v[e] = sums[e];
    store_elements(partials + blockIdx.y * rows * g.out_channels + at, x);
  } else {
    Elements<scalar_t, kCount> x;
    RCM_UNROLL
    for (int e = 0; e < kCount; ++e) {
      x.v[e] = static_cast<scalar_t>(sums[e] + (bias != nullptr ? static_cast<acc_t>(bias[channel + e]) : acc_t(0)));
    }
    store_elements(out + at, x);
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_gemm_output(const DeformConvGeometry& g, int64_t rows, int64_t row,
                                                  int64_t channel, acc_t sum, const scalar_t* bias, scalar_t* out,
                                                  acc_t* partials) {
  const acc_t sums[1] = {sum};
  store_gemm_outputs<1>(g, rows, row, channel, sums, bias, out, partials);
}

// An MMA accumulator pair of output pixel `row`: output channels co and co + 1 of conv group `group`
// (cog output channels, co < cog, co even): both in one store where cog is even (then so is
// row * C_out + group * cog + co), one by one otherwise (the second only where it exists).
template <typename scalar_t>
__device__ __forceinline__ void store_gemm_output_pair(const DeformConvGeometry& g, int64_t rows, int64_t row,
                                                       int64_t group, int64_t cog, int64_t co, const float (&d)[2],
                                                       const scalar_t* bias, scalar_t* out, float* partials) {
  if (cog % 2 == 0) {
    store_gemm_outputs<2>(g, rows, row, group * cog + co, d, bias, out, partials);
  } else {
    store_gemm_output(g, rows, row, group * cog + co, d[0], bias, out, partials);
    if (co + 1 < cog) store_gemm_output(g, rows, row, group * cog + co + 1, d[1], bias, out, partials);
  }
}

// The output of a split forward: out[row, co] = sum over splits of partials[split, row, co] (in
// split order), plus bias[co]. One thread per output element.
// partials: (splits, rows, C_out) in acc_t; bias: (C_out) or null; out: (rows, C_out).
template <typename scalar_t, typename acc_t>
__global__ void deform_conv2d_split_sum_kernel(int64_t elements, int64_t out_channels, int splits,
                                               const acc_t* __restrict__ partials,
                                               const scalar_t* __restrict__ bias, scalar_t* __restrict__ out) {
  const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < elements; e += step) {
    acc_t sum = partials[e];
    for (int s = 1; s < splits; ++s) sum += partials[s * elements + e];
    if (bias != nullptr) sum += static_cast<acc_t>(bias[e % out_channels]);
    out[e] = static_cast<scalar_t>(sum);
  }
}

}  // namespace kernels
}  // namespace rcm_fsad
