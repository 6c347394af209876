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
//     t and t + 4 of both (see blend_row), and the weights are read in the same order;
//   * the weight fragments are 16-byte loads straight from the weight matrix (L1 and L2 hold it;
//     the warps of a block read the same tile);
//   * the corners of the warp's rows, computed once per (kernel point, offset group) run, are the
//     only thing in shared memory, the warp's own, so the only synchronisation is __syncwarp;
//   * a warp loads the next step's corner vectors of a row before multiplying a quarter of the
//     columns and blends them after, so that the loads are in flight while the tensor cores work
//     (one block per SM: the accumulators and all this take up to the whole register file).
// Same reduction steps (64 bytes of channels) and grid as the cp.async WMMA kernel.
// Torch-free: launched by csrc/cuda/deform_conv2d_cuda.cu and by the CPU emulation harness.
#pragma once

#include "deform_conv2d_tile_corners.cuh"
#include "mma_sync.cuh"
#include "vector16.cuh"

namespace rcm_fsad {
namespace kernels {

// kWarpCols_: a warp's output channels, 64 or 128 (8 or 16 MMA tiles of 8 columns);
// kWarpsAlongCols_: 1 or 2. Eight warps, each 32 rows.
template <int kWarpCols_, int kWarpsAlongCols_>
struct MmaTiles {
  static constexpr int kWarpRows = 32;  // two MMA tiles of 16 rows
  static constexpr int kWarpCols = kWarpCols_;
  static constexpr int kWarps = 8;
  static constexpr int kWarpsAlongCols = kWarpsAlongCols_;
  static constexpr int kWarpsAlongRows = kWarps / kWarpsAlongCols;
  static constexpr int kRows = kWarpRows * kWarpsAlongRows;  // BM
  static constexpr int kCols = kWarpCols * kWarpsAlongCols;  // BN
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowTiles = kWarpRows / 16;
  static constexpr int kColTiles = kWarpCols / 8;
  // One block per SM, with the whole register file: up to 128 accumulators per thread, beside the
  // fragments of two steps and the corner vectors in flight.
  static constexpr int kBlocksPerSM = 1;
};

// The warps for a conv group of `cog` output channels: as wide as the group up to 128 columns, so
// that no warp multiplies only zeros; two along the columns above that (a block of a 256-channel
// layer samples each element once: the second warp of a row reads it from L1).
RCM_HD int mma_warp_cols(int64_t cog) { return cog > 64 ? 128 : 64; }
RCM_HD int mma_warps_along_cols(int64_t cog) { return cog > 128 ? 2 : 1; }

// Dynamic shared memory of the kernel below: the corners of each warp's rows, with 32-bit pixel
// indices (one wide multiply per corner load instead of a 64-bit one).
template <typename Tiles>
struct MmaShared {
  TileCorners<float, 32, int32_t> corners[Tiles::kWarps];
};

template <typename Tiles>
constexpr size_t mma_shared_bytes() {
  return sizeof(MmaShared<Tiles>);
}

// Whether the kernel's 32-bit pixel indices reach every pixel of the batch.
RCM_HD bool mma_pixels_fit(const DeformConvGeometry& g) {
  return g.batch * g.height * g.width <= int64_t{0x7fffffff};
}

#if defined(RCM_WMMA_AVAILABLE)
// 16 bytes as the four 32-bit words that MMA fragments are made of.
template <typename T>
__device__ __forceinline__ void to_words(const Vector16<T>& x, uint32_t (&w)[4]) {
  const Vector16<uint32_t> u = load16<uint32_t>(&x);
  RCM_UNROLL
  for (int j = 0; j < 4; ++j) w[j] = u.v[j];
}
#endif  // RCM_WMMA_AVAILABLE

// Grid: (gemm_grid_x<BM, BN>(g), splits, groups) with T = MmaTiles<kWarpCols, kWarpsAlongCols>;
// block: T::kThreads; dynamic shared memory: mma_shared_bytes<T>().
// scalar_t and mma_t as for deform_conv2d_implicit_gemm_wmma_kernel (c10::Half with __half,
// c10::BFloat16 with __nv_bfloat16, float with Tf32), and so are the arguments; the launcher
// guarantees what the 16-byte loads need: input and wmat 16-byte aligned, and
// g.channel_runs_are_multiples_of(Vector16<scalar_t>::kSize); and mma_pixels_fit(g).
template <typename scalar_t, typename mma_t, int kWarpCols, int kWarpsAlongCols>
__global__ void __launch_bounds__(MmaTiles<kWarpCols, kWarpsAlongCols>::kThreads,
                                  MmaTiles<kWarpCols, kWarpsAlongCols>::kBlocksPerSM)
    deform_conv2d_implicit_gemm_mma_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                                           const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                                           const scalar_t* __restrict__ mask, FieldStrides mask_strides,
                                           const scalar_t* __restrict__ wmat, const scalar_t* __restrict__ bias,
                                           scalar_t* __restrict__ out, float* __restrict__ partials) {
#if defined(RCM_WMMA_AVAILABLE)
  using T = MmaTiles<kWarpCols, kWarpsAlongCols>;
  using In = MmaInput<mma_t>;
  using smem_t = typename In::smem_t;
  using Corners = TileCorners<float, 32, int32_t>;
  using Steps = ReductionSteps<4 * Vector16<scalar_t>::kSize>;
  static_assert(sizeof(smem_t) == sizeof(scalar_t), "weights are read as the MMA's words");
  // A reduction step (Steps): 64 bytes of channels, 16 per thread of a quad, two MMAs deep.
  constexpr int kVector = Vector16<scalar_t>::kSize;

  RCM_DYNAMIC_SHARED(MmaShared<T>, shared);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int quad = lane / 4;  // q of mma_sync.cuh: the fragment row (of A and D) or column (of B)
  const int t = lane % 4;     // the thread's 16 bytes of a step's channels
  const GemmTile tile = gemm_tile<T::kRows, T::kCols>(g, blockIdx.x);
  const int64_t row0 = tile.row0 + (warp / T::kWarpsAlongCols) * T::kWarpRows;  // the warp's first row
  const int64_t co0 = tile.co0 + (warp % T::kWarpsAlongCols) * T::kWarpCols;  // and output channel in the group
  const int64_t rows = g.batch * g.out_pixels();
  const int64_t cog = g.out_channels / g.groups;
  // No barrier below: a warp past the last row or output channel just leaves.
  if (row0 >= rows || co0 >= cog) return;
  const int64_t group = blockIdx.z;
  const int64_t cg = g.channels_per_group();
  const int64_t reduction = g.kernel_points() * cg;
  const int32_t channels = static_cast<int32_t>(g.channels);  // the launcher checks C < 2^31
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

  // The corner vectors of row r (of the warp's 32) for a step, to be blended into its A fragments:
  // raw[c] is corner c at thread t's 16 bytes of the step's channels, [c0 + t kVector, ...); zeros
  // for a corner outside the image and past the step's depth.
  using CornerVectors = Vector16<scalar_t>[4];
  auto fetch_row = [&](const Steps& s, int r, CornerVectors& raw) {
    const bool live = t * kVector < s.depth;
    const int64_t c0 = s.c0 + t * kVector;
    RCM_UNROLL
    for (int c = 0; c < 4; ++c) {
      const int32_t pixel = corners.pixel[c][r];
      raw[c] = load16_or_zeros<scalar_t>(input + static_cast<int64_t>(pixel) * channels + c0, input,
                                         live && pixel >= 0);
    }
  };
  // Row r's sample from its corner vectors, in float, rounded to the MMA's input: thread t's words
  // 0 and 1 of the row are its words t and t + 4 of the step's first MMA, words 2 and 3 those of
  // the second.
  auto blend_row = [&](const CornerVectors& raw, int r, uint32_t (&w)[4]) {
    float v[kVector];
    RCM_UNROLL
    for (int j = 0; j < kVector; ++j) v[j] = 0.0f;
    RCM_UNROLL
    for (int c = 0; c < 4; ++c) add_weighted(v, corners.weight[c][r], raw[c]);
    Vector16<smem_t> rounded;
    RCM_UNROLL
    for (int j = 0; j < kVector; ++j) rounded.v[j] = In::from_float(v[j]);
    to_words(rounded, w);
  };
  // A row tile's fragments of the step's two MMAs (a[m]) from the words of its rows quad (w[0])
  // and quad + 8 (w[1]).
  auto to_fragments = [](const uint32_t (&w)[2][4], uint32_t (&a)[2][4]) {
    RCM_UNROLL
    for (int m = 0; m < 2; ++m) {
      a[m][0] = w[0][2 * m];
      a[m][1] = w[1][2 * m];
      a[m][2] = w[0][2 * m + 1];
      a[m][3] = w[1][2 * m + 1];
    }
  };
  // Row h of row tile i: quad + 8 h of the tile.
  auto tile_row = [quad](int i, int h) { return 16 * i + quad + 8 * h; };
  // acc[.][j] += the step's A fragments x its weights, for column tiles [j0, j1): output channels
  // co0 + 8 j + quad, thread t's 16 bytes of the step's channels, in the A fragments' order.
  auto multiply = [&](const Steps& s, const uint32_t (&a)[T::kRowTiles][2][4], int j0, int j1) {
    const bool live = t * kVector < s.depth;
    const int64_t w_col = s.k * cg + (s.c0 + t * kVector - group * cg);
    RCM_UNROLL
    for (int j = j0; j < j1; ++j) {
      const int64_t co = co0 + 8 * j + quad;
      Vector16<smem_t> x = load16_or_zeros<smem_t>(wmat + (group * cog + co) * reduction + w_col, wmat,
                                                   live && co < cog);
      // TF32 operands must be rounded (16-bit weights already are what the MMA reads).
      if constexpr (sizeof(smem_t) == sizeof(float)) {
        RCM_UNROLL
        for (int e = 0; e < kVector; ++e) x.v[e] = In::from_float(x.v[e]);
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
  };
  // Lane r's row of the warp: its output pixel, for the whole reduction, and the field (offset and
  // mask) of the next run it starts, loaded when the run before it starts, so that the loads are in
  // flight while the warp multiplies instead of stalling it when the corners are needed.
  const bool row_live = row0 + lane < rows;
  const OutputPixel px = row_live ? output_pixel(g, row0 + lane) : OutputPixel{0, 0, 0};
  auto load_field = [&](int k, int og) {
    return sample_field<float>(g, px, k, og, offset, offset_strides, mask, mask_strides);
  };
  SampleField<float> field{};
  // The corners of the warp's rows for the run that step s begins, from `field`, which then
  // becomes the field of the run after it.
  auto start_run = [&](const Steps& s) {
    __syncwarp();  // every lane is done with the previous run's corners
    corners.set(lane, row_live ? masked_corners_of<float>(g, px, s.k, field) : no_corners<float>());
    __syncwarp();
    const typename Steps::Run after = s.following_run();
    if (row_live && after.k < s.points) field = load_field(after.k, after.og);
  };
  // The A fragments of step s, whose run's corners are in place.
  auto sample = [&](const Steps& s, uint32_t (&a)[T::kRowTiles][2][4]) {
    RCM_UNROLL
    for (int i = 0; i < T::kRowTiles; ++i) {
      uint32_t w[2][4];
      RCM_UNROLL
      for (int h = 0; h < 2; ++h) {
        CornerVectors raw;
        fetch_row(s, tile_row(i, h), raw);
        blend_row(raw, tile_row(i, h), w[h]);
      }
      to_fragments(w, a[i]);
    }
  };

  // A step's MMAs in one phase per row of the next step's fragments (row tile i, row h): the
  // phase's corner vectors are loaded before its share of the columns is multiplied and blended
  // after, one row at a time so that the registers hold them beside the accumulators.
  constexpr int kPhases = 2 * T::kRowTiles;
  static_assert(T::kColTiles % kPhases == 0, "every phase multiplies the same number of column tiles");
  constexpr int kColsPerPhase = T::kColTiles / kPhases;
  Steps s(g, group, kernel_point_range(g, blockIdx.y, gridDim.y));
  if (!s.done()) {
    uint32_t a[T::kRowTiles][2][4];
    if (row_live) field = load_field(s.k, s.og);
    start_run(s);
    sample(s, a);
    for (;;) {
      Steps next = s;
      next.next();
      const bool more = !next.done();
      // The corners of the step that comes next are not read by this one's MMAs.
      if (more && next.first_of_run) start_run(next);
      uint32_t w[T::kRowTiles][2][4];  // the next step's words
      RCM_UNROLL
      for (int p = 0; p < kPhases; ++p) {
        const int i = p / 2, h = p % 2;
        CornerVectors raw;
        if (more) fetch_row(next, tile_row(i, h), raw);
        multiply(s, a, p * kColsPerPhase, (p + 1) * kColsPerPhase);
        if (more) blend_row(raw, tile_row(i, h), w[i][h]);
      }
      if (!more) break;
      RCM_UNROLL
      for (int i = 0; i < T::kRowTiles; ++i) to_fragments(w[i], a[i]);
      s = next;
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
