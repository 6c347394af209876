// Implicit-GEMM forward of DCNv2 (CUDA fast path): the columns matrix is never materialised.
// Each block computes a BM x BN tile of out (rows x C_out of one conv group), walking the
// reduction dimension (kernel point k, channel c) in BK-channel steps; the A tile is sampled
// straight into shared memory from the NHWC input, with the bilinear corners and weights of each
// (row, k, offset group) computed once and shared by all its channels. Accumulation in acc_t.
// Torch-free: launched by csrc/cuda/deform_conv2d_cuda.cu and by the CPU emulation harness.
#pragma once

#include "deform_conv2d_math.cuh"

namespace rcm_fsad {
namespace kernels {

struct ImplicitGemmTiles {
  static constexpr int kRows = 64;      // BM: output pixels per block
  static constexpr int kCols = 64;      // BN: output channels per block
  static constexpr int kDepth = 16;     // BK: channels per reduction step
  static constexpr int kThreadRows = 4;  // TM
  static constexpr int kThreadCols = 4;  // TN
  static constexpr int kThreads = (kRows / kThreadRows) * (kCols / kThreadCols);
};

// Grid: (ceil(rows / BM), ceil(C_out/groups / BN), groups); block: ImplicitGemmTiles::kThreads.
// input: NHWC (N, H, W, C); wmat: (C_out, kh*kw*C/groups) as made by weight_matrix();
// bias: (C_out) or null; out: (rows, C_out), rows = N*H_out*W_out in NHWC order.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(ImplicitGemmTiles::kThreads)
    deform_conv2d_implicit_gemm_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                                       const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                                       const scalar_t* __restrict__ mask, FieldStrides mask_strides,
                                       const scalar_t* __restrict__ wmat, const scalar_t* __restrict__ bias,
                                       scalar_t* __restrict__ out) {
  using T = ImplicitGemmTiles;
  __shared__ acc_t a_tile[T::kDepth][T::kRows];
  __shared__ acc_t b_tile[T::kDepth][T::kCols];
  // Per row of the tile, for the current (k, offset group): the four corners' pixel indices in the
  // whole NHWC batch (-1 for a corner outside the image) and their weights times the mask.
  __shared__ int64_t corner_pixel[4][T::kRows];
  __shared__ acc_t corner_weight[4][T::kRows];

  const int tid = threadIdx.x;
  const int tx = tid % (T::kCols / T::kThreadCols);
  const int ty = tid / (T::kCols / T::kThreadCols);
  const int64_t rows = g.batch * g.out_pixels();
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * T::kRows;
  const int64_t co0 = static_cast<int64_t>(blockIdx.y) * T::kCols;
  const int64_t group = blockIdx.z;
  const int64_t cg = g.channels_per_group();
  const int64_t cog = g.out_channels / g.groups;
  const int64_t cpog = g.channels_per_offset_group();
  const int64_t reduction = g.kernel_points() * cg;

  acc_t acc[T::kThreadRows][T::kThreadCols];
  for (int i = 0; i < T::kThreadRows; ++i)
    for (int j = 0; j < T::kThreadCols; ++j) acc[i][j] = acc_t(0);

  for (int64_t k = 0; k < g.kernel_points(); ++k) {
    // The group's channels in runs that stay in one offset group (one sample point per row).
    for (int64_t run_begin = group * cg, run_end; run_begin < (group + 1) * cg; run_begin = run_end) {
      const int64_t og = run_begin / cpog;
      run_end = min_of((og + 1) * cpog, (group + 1) * cg);
      // Safe without a barrier: every read of corner_* happened before the last barrier below.
      if (tid < T::kRows) {
        const int64_t row = row0 + tid;
        if (row < rows) {
          const OutputPixel px = output_pixel(g, row);
          const SamplePoint<acc_t> p =
              deform_sample_point<acc_t>(g, offset, offset_strides, px.n, og, k, px.oy, px.ox);
          const acc_t m = modulation<acc_t>(g, mask, mask_strides, px.n, og, k, px.oy, px.ox);
          const int64_t image_pixel0 = px.n * g.height * g.width;
          for (int i = 0; i < 4; ++i) {
            corner_pixel[i][tid] = p.valid[i] ? image_pixel0 + p.pixel[i] : -1;
            corner_weight[i][tid] = p.weight[i] * m;
          }
        } else {
          for (int i = 0; i < 4; ++i) {
            corner_pixel[i][tid] = -1;
            corner_weight[i][tid] = acc_t(0);
          }
        }
      }
      for (int64_t c0 = run_begin; c0 < run_end; c0 += T::kDepth) {
        const int64_t depth = min_of<int64_t>(T::kDepth, run_end - c0);
        __syncthreads();  // corner_* written; the previous step's tiles consumed
        for (int e = tid; e < T::kRows * T::kDepth; e += T::kThreads) {
          const int r = e / T::kDepth;
          const int ch = e % T::kDepth;
          acc_t v = acc_t(0);
          if (ch < depth) {
            for (int i = 0; i < 4; ++i) {
              const int64_t pixel = corner_pixel[i][r];
              if (pixel >= 0) {
                v += corner_weight[i][r] * static_cast<acc_t>(input[pixel * g.channels + c0 + ch]);
              }
            }
          }
          a_tile[ch][r] = v;
        }
        const int64_t w_col0 = k * cg + (c0 - group * cg);
        for (int e = tid; e < T::kCols * T::kDepth; e += T::kThreads) {
          const int n = e / T::kDepth;
          const int ch = e % T::kDepth;
          const int64_t co = co0 + n;
          b_tile[ch][n] = (ch < depth && co < cog)
                              ? static_cast<acc_t>(wmat[(group * cog + co) * reduction + w_col0 + ch])
                              : acc_t(0);
        }
        __syncthreads();  // tiles complete
        for (int kk = 0; kk < T::kDepth; ++kk) {
          acc_t a[T::kThreadRows];
          acc_t b[T::kThreadCols];
          for (int i = 0; i < T::kThreadRows; ++i) a[i] = a_tile[kk][ty * T::kThreadRows + i];
          for (int j = 0; j < T::kThreadCols; ++j) b[j] = b_tile[kk][tx * T::kThreadCols + j];
          for (int i = 0; i < T::kThreadRows; ++i)
            for (int j = 0; j < T::kThreadCols; ++j) acc[i][j] += a[i] * b[j];
        }
      }
    }
  }

  for (int i = 0; i < T::kThreadRows; ++i) {
    const int64_t row = row0 + ty * T::kThreadRows + i;
    if (row >= rows) continue;
    for (int j = 0; j < T::kThreadCols; ++j) {
      const int64_t co = co0 + tx * T::kThreadCols + j;
      if (co >= cog) continue;
      const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[group * cog + co]) : acc_t(0);
      out[row * g.out_channels + group * cog + co] = static_cast<scalar_t>(acc[i][j] + b);
    }
  }
}

}  // namespace kernels
}  // namespace rcm_fsad
