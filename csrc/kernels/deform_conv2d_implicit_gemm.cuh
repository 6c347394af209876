// Implicit-GEMM forward of DCNv2 on CUDA cores (float64, float32 where no tensor-core kernel applies,
// and implicit_gemm_simt): the columns matrix is never materialised.
// Each block computes a BM x BN tile of out (rows x C_out of one conv group), walking the
// reduction dimension (kernel point k, channel c) in BK-channel steps; the A tile is sampled
// straight into shared memory from the NHWC input, with the bilinear corners and weights of each
// (row, k, offset group) computed once and shared by all its channels. Accumulation in acc_t.
// Torch-free: launched by csrc/cuda/deform_conv2d_forward_cuda.cu and by the CPU emulation harness.
#pragma once

#include "deform_conv2d_tile_corners.cuh"
#include "vector16.cuh"

namespace rcm_fsad {
namespace kernels {

// Tiles for float accumulation: 128 x 128 blocks, each thread 8 x 8 of the tile, so that every 64
// multiply-adds take 4 16-byte shared-memory loads (1024 FMAs for 64 loads a step) and the fill
// (8 sampled and 8 weight elements per thread a step) is small next to them; 256 threads, two
// blocks per SM. For double accumulation 64 x 64 blocks of 4 x 4 per thread, which fit the registers.
template <typename acc_t>
struct ImplicitGemmTiles {
  static constexpr bool kWide = sizeof(acc_t) <= 4;
  static constexpr int kRows = kWide ? 128 : 64;  // BM: output pixels per block
  static constexpr int kCols = kWide ? 128 : 64;  // BN: output channels per block
  static constexpr int kDepth = 16;               // BK: channels per reduction step
  static constexpr int kThreadRows = kWide ? 8 : 4;  // TM
  static constexpr int kThreadCols = kWide ? 8 : 4;  // TN
  static constexpr int kThreads = (kRows / kThreadRows) * (kCols / kThreadCols);
  static constexpr int kBlocksPerSM = 2;
};

// Shared memory of the kernel below. The fills have 16 consecutive threads write one row's 16
// channels, i.e. 16 different rows of the tiles: 4 elements of padding spread them over 8 banks
// instead of one (2-way instead of 16-way conflicts) and keep the rows 16-byte aligned for the vector
// reads of a thread's TM (TN) consecutive elements.
template <typename acc_t>
struct ImplicitGemmShared {
  using T = ImplicitGemmTiles<acc_t>;
  alignas(16) acc_t a_tile[T::kDepth][T::kRows + 4];
  alignas(16) acc_t b_tile[T::kDepth][T::kCols + 4];
  TileCorners<acc_t, T::kRows> corners;  // of the current (k, offset group)
};

template <typename acc_t>
constexpr size_t implicit_gemm_shared_bytes() {
  return sizeof(ImplicitGemmShared<acc_t>);
}

// Grid: (gemm_grid_x<BM, BN>(g), splits, groups); block: ImplicitGemmTiles<acc_t>::kThreads;
// dynamic shared memory: implicit_gemm_shared_bytes<acc_t>().
// input: NHWC (N, H, W, C); wmat: (C_out, kh*kw*C/groups) as made by weight_matrix();
// bias: (C_out) or null; out: (rows, C_out), rows = N*H_out*W_out in NHWC order.
// Split (splits > 1): partials (splits, rows, C_out) receive the sums without bias, out is not
// written (deform_conv2d_split_sum_kernel finishes); partials is null otherwise.
// kVectors: the tiles are filled 16 bytes at a time (four corner loads and one blend per vector of
// channels, one weight load per vector), for which the launcher guarantees input and wmat 16-byte
// aligned and g.channel_runs_are_multiples_of(Vector16<scalar_t>::kSize); element by element
// otherwise.
template <typename scalar_t, typename acc_t, bool kVectors>
__global__ void __launch_bounds__(ImplicitGemmTiles<acc_t>::kThreads, ImplicitGemmTiles<acc_t>::kBlocksPerSM)
    deform_conv2d_implicit_gemm_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                                       const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                                       const scalar_t* __restrict__ mask, FieldStrides mask_strides,
                                       const scalar_t* __restrict__ wmat, const scalar_t* __restrict__ bias,
                                       scalar_t* __restrict__ out, acc_t* __restrict__ partials) {
  using T = ImplicitGemmTiles<acc_t>;
  RCM_DYNAMIC_SHARED(ImplicitGemmShared<acc_t>, shared);
  auto& a_tile = shared->a_tile;
  auto& b_tile = shared->b_tile;
  auto& corners = shared->corners;

  const int tid = threadIdx.x;
  const int tx = tid % (T::kCols / T::kThreadCols);
  const int ty = tid / (T::kCols / T::kThreadCols);
  const int64_t rows = g.batch * g.out_pixels();
  const GemmTile tile = gemm_tile<T::kRows, T::kCols>(g, blockIdx.x);
  const int64_t row0 = tile.row0;
  const int64_t co0 = tile.co0;
  const int64_t group = blockIdx.z;
  const int64_t cg = g.channels_per_group();
  const int64_t cog = g.out_channels / g.groups;
  const int64_t reduction = g.kernel_points() * cg;

  acc_t acc[T::kThreadRows][T::kThreadCols];
  RCM_UNROLL
  for (int i = 0; i < T::kThreadRows; ++i) {
    RCM_UNROLL
    for (int j = 0; j < T::kThreadCols; ++j) acc[i][j] = acc_t(0);
  }

  for (ReductionSteps<T::kDepth> step(g, group, kernel_point_range(g, blockIdx.y, gridDim.y)); !step.done();
       step.next()) {
    const int64_t k = step.k, c0 = step.c0;
    const int depth = step.depth;
    // Safe without a barrier: corners were last read before the previous step's second barrier.
    if (step.first_of_run && tid < T::kRows) {
      set_tile_corners(corners, tid, g, row0, k, step.og, offset, offset_strides, mask, mask_strides);
    }
    __syncthreads();  // corners written; the previous step's tiles consumed
    const int64_t w_col0 = k * cg + (c0 - group * cg);
    if constexpr (kVectors) {
      // Runs of channels are whole vectors, so a vector is either within depth or past it (zeros).
      constexpr int kVector = Vector16<scalar_t>::kSize;
      constexpr int kStepVectors = T::kDepth / kVector;
      RCM_NO_UNROLL
      for (int e = tid; e < T::kRows * kStepVectors; e += T::kThreads) {
        const int r = e / kStepVectors;
        const int ch0 = (e % kStepVectors) * kVector;
        acc_t v[kVector];
        RCM_UNROLL
        for (int j = 0; j < kVector; ++j) v[j] = acc_t(0);
        if (ch0 < depth) {
          RCM_UNROLL
          for (int i = 0; i < 4; ++i) {
            const int64_t pixel = corners.pixel[i][r];
            add_weighted(v, corners.weight[i][r],
                         load16_if<scalar_t>(pixel >= 0 ? input + pixel * g.channels + c0 + ch0 : input, pixel >= 0));
          }
        }
        RCM_UNROLL
        for (int j = 0; j < kVector; ++j) a_tile[ch0 + j][r] = v[j];
      }
      RCM_NO_UNROLL
      for (int e = tid; e < T::kCols * kStepVectors; e += T::kThreads) {
        const int n = e / kStepVectors;
        const int ch0 = (e % kStepVectors) * kVector;
        const int64_t co = co0 + n;
        const bool use = ch0 < depth && co < cog;
        const Vector16<scalar_t> w =
            load16_if<scalar_t>(use ? wmat + (group * cog + co) * reduction + w_col0 + ch0 : wmat, use);
        RCM_UNROLL
        for (int j = 0; j < kVector; ++j) b_tile[ch0 + j][n] = static_cast<acc_t>(w.v[j]);
      }
    } else {
      // Not unrolled: each iteration's loads would take registers the 8 x 8 accumulators need.
      RCM_NO_UNROLL
      for (int e = tid; e < T::kRows * T::kDepth; e += T::kThreads) {
        const int r = e / T::kDepth;
        const int ch = e % T::kDepth;
        a_tile[ch][r] = ch < depth ? sample_tile_row(corners, r, input, g.channels, c0 + ch) : acc_t(0);
      }
      RCM_NO_UNROLL
      for (int e = tid; e < T::kCols * T::kDepth; e += T::kThreads) {
        const int n = e / T::kDepth;
        const int ch = e % T::kDepth;
        const int64_t co = co0 + n;
        b_tile[ch][n] = (ch < depth && co < cog)
                            ? static_cast<acc_t>(wmat[(group * cog + co) * reduction + w_col0 + ch])
                            : acc_t(0);
      }
    }
    __syncthreads();  // tiles complete
    RCM_UNROLL
    for (int kk = 0; kk < T::kDepth; ++kk) {
      acc_t a[T::kThreadRows];
      acc_t b[T::kThreadCols];
      RCM_UNROLL
      for (int i = 0; i < T::kThreadRows; ++i) a[i] = a_tile[kk][ty * T::kThreadRows + i];
      RCM_UNROLL
      for (int j = 0; j < T::kThreadCols; ++j) b[j] = b_tile[kk][tx * T::kThreadCols + j];
      RCM_UNROLL
      for (int i = 0; i < T::kThreadRows; ++i) {
        RCM_UNROLL
        for (int j = 0; j < T::kThreadCols; ++j) acc[i][j] += a[i] * b[j];
      }
    }
  }

  RCM_UNROLL
  for (int i = 0; i < T::kThreadRows; ++i) {
    const int64_t row = row0 + ty * T::kThreadRows + i;
    if (row >= rows) continue;
    RCM_UNROLL
    for (int j = 0; j < T::kThreadCols; ++j) {
      const int64_t co = co0 + tx * T::kThreadCols + j;
      if (co < cog) store_gemm_output(g, rows, row, group * cog + co, acc[i][j], bias, out, partials);
    }
  }
}

}  // namespace kernels
}  // namespace rcm_fsad
