// Tensor-core implicit-GEMM forward of DCNv2 whose sampled operand never leaves registers, for
// float16, bfloat16 and TF32 when every run of channels is whole 16-byte vectors.
// The WMMA kernels sample the A tile into shared memory and load it back as fragments, copy the
// weight tile there too, and hold all their warps at a barrier or two per reduction step: per
// step, a 128 x 128 block moves about 128 KB through shared memory (corner vectors, A and B tiles
// and their fragment loads), which bounds it near a third of the tensor cores' rate. Here every
// warp works alone on 32 rows x kWarpCols output channels, with mma.sync (mma_sync.cuh):
//   * each thread of a quad (lane % 4) samples its own 16 bytes of channels of the quad's rows
//     from the four corner vectors, in float, and its words are, unchanged, the A fragment words
//     of the step's two MMAs: the reduction is ordered so that thread t's channels are the words
//     t and t + 4 of both (see sample_words), and the weights are read in the same order;
//   * the weight fragments are 16-byte loads straight from the weight matrix (L1 and L2 hold it;
//     the warps of a block read the same tile);
//   * the corners of the warp's rows, computed once per (kernel point, offset group) run, are the
//     only thing in shared memory, the warp's own, so the only synchronisation is __syncwarp.
// Same reduction steps (64 bytes of channels) and grid as the cp.async WMMA kernel.
// Torch-free: launched by csrc/cuda/deform_conv2d_cuda.cu and by the CPU emulation harness.
#pragma once

#include "deform_conv2d_tile_corners.cuh"
#include "mma_sync.cuh"
#include "vector16.cuh"

#if !defined(__CUDA_ARCH__)
#include <cstring>
#endif

namespace rcm_fsad {
namespace kernels {

// kWarpCols_: a warp's output channels, 64 or 128 (8 or 16 MMA tiles of 8 columns).
template <int kWarpCols_>
struct MmaTiles {
  static constexpr int kWarpRows = 32;  // two MMA tiles of 16 rows
  static constexpr int kWarpCols = kWarpCols_;
  static constexpr int kWarpsAlongRows = 4;
  static constexpr int kWarpsAlongCols = 2;
  static constexpr int kRows = kWarpRows * kWarpsAlongRows;  // BM
  static constexpr int kCols = kWarpCols * kWarpsAlongCols;  // BN
  static constexpr int kWarps = kWarpsAlongRows * kWarpsAlongCols;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowTiles = kWarpRows / 16;
  static constexpr int kColTiles = kWarpCols / 8;
  // 128 accumulators per thread at 128 columns: one block per SM, with the whole register file.
  static constexpr int kBlocksPerSM = kWarpCols == 128 ? 1 : 2;
};

// The block width for a conv group of `cog` output channels: 256 (warps of 128) when it has more
// than 128, so that a block of a 256-channel layer samples each element once, 128 otherwise.
RCM_HD int mma_warp_cols(int64_t cog) { return cog > 128 ? 128 : 64; }

// Dynamic shared memory of the kernel below: the corners of each warp's rows.
template <typename Tiles>
struct MmaShared {
  TileCorners<float, 32> corners[Tiles::kWarps];
};

template <typename Tiles>
constexpr size_t mma_shared_bytes() {
  return sizeof(MmaShared<Tiles>);
}

#if defined(RCM_WMMA_AVAILABLE)
// 16 bytes as the four 32-bit words that MMA fragments are made of.
template <typename T>
__device__ __forceinline__ void to_words(const Vector16<T>& x, uint32_t (&w)[4]) {
#if defined(__CUDA_ARCH__)
  const uint4 u = *reinterpret_cast<const uint4*>(&x);
  w[0] = u.x;
  w[1] = u.y;
  w[2] = u.z;
  w[3] = u.w;
#else
  std::memcpy(w, x.v, sizeof w);
#endif
}
#endif  // RCM_WMMA_AVAILABLE

// Grid: (gemm_grid_x<BM, BN>(g), splits, groups); block: MmaTiles<kWarpCols>::kThreads; dynamic
// shared memory: mma_shared_bytes<MmaTiles<kWarpCols>>().
// scalar_t and mma_t as for deform_conv2d_implicit_gemm_wmma_kernel (c10::Half with __half,
// c10::BFloat16 with __nv_bfloat16, float with Tf32), and so are the arguments; the launcher
// guarantees what the 16-byte loads need: input and wmat 16-byte aligned, and
// g.channel_runs_are_multiples_of(Vector16<scalar_t>::kSize).
template <typename scalar_t, typename mma_t, int kWarpCols>
__global__ void __launch_bounds__(MmaTiles<kWarpCols>::kThreads, MmaTiles<kWarpCols>::kBlocksPerSM)
    deform_conv2d_implicit_gemm_mma_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                                           const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                                           const scalar_t* __restrict__ mask, FieldStrides mask_strides,
                                           const scalar_t* __restrict__ wmat, const scalar_t* __restrict__ bias,
                                           scalar_t* __restrict__ out, float* __restrict__ partials) {
#if defined(RCM_WMMA_AVAILABLE)
  using T = MmaTiles<kWarpCols>;
  using In = MmaInput<mma_t>;
  using smem_t = typename In::smem_t;
  using Corners = TileCorners<float, 32>;
  static_assert(sizeof(smem_t) == sizeof(scalar_t), "weights are read as the MMA's words");
  // A reduction step: 64 bytes of channels, 16 per thread of a quad, two MMAs deep.
  constexpr int kVector = Vector16<scalar_t>::kSize;
  constexpr int kDepth = 4 * kVector;

  RCM_DYNAMIC_SHARED(MmaShared<T>, shared);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int quad = lane / 4;  // q of mma_sync.cuh: the fragment row (of A and D) or column (of B)
  const int t = lane % 4;     // the thread's 16 bytes of a step's channels
  const GemmTile tile = gemm_tile<T::kRows, T::kCols>(g, blockIdx.x);
  const int64_t row0 = tile.row0 + (warp / T::kWarpsAlongCols) * T::kWarpRows;  // the warp's first row
  const int64_t co0 = tile.co0 + (warp % T::kWarpsAlongCols) * T::kWarpCols;  // and output channel in the group
  const int64_t rows = g.batch * g.out_pixels();
  if (row0 >= rows) return;  // no barrier below: a warp past the last row just leaves
  const int64_t group = blockIdx.z;
  const int64_t cg = g.channels_per_group();
  const int64_t cog = g.out_channels / g.groups;
  const int64_t reduction = g.kernel_points() * cg;
  Corners& corners = shared->corners[warp];

  float acc[T::kRowTiles][T::kColTiles][4];
  RCM_UNROLL
  for (int i = 0; i < T::kRowTiles; ++i) {
    RCM_UNROLL
    for (int j = 0; j < T::kColTiles; ++j) {
      RCM_UNROLL
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    }
  }

  // Thread t's 16 bytes of channels [c0 + t kVector, ...) of row r (of the warp's 32), sampled in
  // float from the corners and rounded to the MMA's input: words 0 and 1 are its words t and t + 4
  // of the step's first MMA, words 2 and 3 those of the second. Zeros where `live` is false (past
  // the step's depth; rows past the last have no corners inside the image).
  auto sample_words = [&](int r, int64_t c0, bool live, uint32_t (&w)[4]) {
    float v[kVector];
    RCM_UNROLL
    for (int j = 0; j < kVector; ++j) v[j] = 0.0f;
    if (live) {
      RCM_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int64_t pixel = corners.pixel[i][r];
        if (pixel < 0) continue;
        add_weighted(v, corners.weight[i][r], load16<scalar_t>(input + pixel * g.channels + c0));
      }
    }
    Vector16<smem_t> rounded;
    RCM_UNROLL
    for (int j = 0; j < kVector; ++j) rounded.v[j] = In::from_float(v[j]);
    to_words(rounded, w);
  };

  for (ReductionSteps<kDepth> s(g, group, kernel_point_range(g, blockIdx.y, gridDim.y)); !s.done(); s.next()) {
    if (s.first_of_run) {
      __syncwarp();  // every lane is done with the previous run's corners
      set_tile_corners(corners, lane, g, row0, s.k, s.og, offset, offset_strides, mask, mask_strides);
      __syncwarp();
    }
    const bool live = t * kVector < s.depth;
    const int64_t c0 = s.c0 + t * kVector;
    // A: a[i][m] for row tile i and the step's MMA m.
    uint32_t a[T::kRowTiles][2][4];
    RCM_UNROLL
    for (int i = 0; i < T::kRowTiles; ++i) {
      uint32_t upper[4], lower[4];  // rows quad and quad + 8 of the tile
      sample_words(16 * i + quad, c0, live, upper);
      sample_words(16 * i + quad + 8, c0, live, lower);
      RCM_UNROLL
      for (int m = 0; m < 2; ++m) {
        a[i][m][0] = upper[2 * m];
        a[i][m][1] = lower[2 * m];
        a[i][m][2] = upper[2 * m + 1];
        a[i][m][3] = lower[2 * m + 1];
      }
    }
    // B, one column tile at a time: output channel co0 + 8 j + quad, the same 16 bytes of channels.
    const int64_t w_col = s.k * cg + (c0 - group * cg);
    RCM_UNROLL
    for (int j = 0; j < T::kColTiles; ++j) {
      const int64_t co = co0 + 8 * j + quad;
      Vector16<smem_t> x;
      if (live && co < cog) {
        x = load16<smem_t>(wmat + (group * cog + co) * reduction + w_col);
        // TF32 operands must be rounded (16-bit weights already are what the MMA reads).
        if constexpr (sizeof(smem_t) == sizeof(float)) {
          RCM_UNROLL
          for (int e = 0; e < kVector; ++e) x.v[e] = In::from_float(x.v[e]);
        }
      } else {
        RCM_UNROLL
        for (int e = 0; e < kVector; ++e) x.v[e] = In::from_float(0.0f);
      }
      uint32_t words[4];
      to_words(x, words);
      RCM_UNROLL
      for (int m = 0; m < 2; ++m) {
        const uint32_t b[2] = {words[2 * m], words[2 * m + 1]};
        RCM_UNROLL
        for (int i = 0; i < T::kRowTiles; ++i) mma_m16n8<mma_t>(acc[i][j], a[i][m], b);
      }
    }
  }

  // D: rows quad and quad + 8 of each row tile, output channels 2t and 2t + 1 of each column tile.
  RCM_UNROLL
  for (int i = 0; i < T::kRowTiles; ++i) {
    RCM_UNROLL
    for (int j = 0; j < T::kColTiles; ++j) {
      RCM_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int64_t row = row0 + 16 * i + quad + 8 * (e / 2);
        const int64_t co = co0 + 8 * j + 2 * t + e % 2;
        if (row < rows && co < cog) store_gemm_output(g, rows, row, group * cog + co, acc[i][j][e], bias, out, partials);
      }
    }
  }
#endif  // RCM_WMMA_AVAILABLE
}

}  // namespace kernels
}  // namespace rcm_fsad
