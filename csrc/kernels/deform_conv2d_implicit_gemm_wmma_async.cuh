// Tensor-core implicit-GEMM forward of DCNv2 with its loads in flight while it multiplies: the WMMA
// path for float16, bfloat16 and TF32 when every run of channels is whole 16-byte vectors.
// Same tiles, warps and MMAs as deform_conv2d_implicit_gemm_wmma_kernel (with 64 bytes of channels
// per reduction step: 32 16-bit ones, 16 floats), whose steps each waited for their global loads
// (four corner vectors per sampled element, the weight tile) before the tensor cores could start.
// Here a reduction step's loads are cp.async copies into shared memory, issued one step ahead:
// the raw corner vectors of every (row, 16-byte vector) item, zero-filled for corners outside the
// image, and the weight tile. While they land, the block blends the previous step's corners
// (shared to shared, in float, rounded once into the A tile) and multiplies.
// Torch-free: launched by csrc/cuda/deform_conv2d_forward_cuda.cu and by the CPU emulation harness.
#pragma once

#include "async_copy.cuh"
#include "deform_conv2d_implicit_gemm_wmma.cuh"

namespace rcm_fsad {
namespace kernels {

// The kernel's dynamic shared memory: two stages of copies (the step being blended and
// multiplied, and the next one in flight), the A tile, and the corners of three runs (see the
// kernel's loop).
template <typename scalar_t, typename smem_t, typename Tiles>
struct WmmaAsyncShared {
  static constexpr int kStages = 2;
  static constexpr int kPitch = Tiles::template kPitch<smem_t>;
  union {
    scalar_t raw[kStages][4][Tiles::kRows * Tiles::kDepth];  // [stage][corner][row][channel]
    // The epilogue's per-warp staging tiles: after the last step's barrier no thread reads raw
    // and no copy into it is in flight.
    float staging[Tiles::kWarps][Tiles::kFrag * Tiles::kFrag];
  } corner_vectors;
  smem_t b[kStages][Tiles::kCols * kPitch];  // [stage][output channel][channel]
  smem_t a[Tiles::kRows * kPitch];           // [row][channel]
  TileCorners<float, Tiles::kRows> corners[3];
};

// The kernel's tiles for tensors of scalar_t: a reduction step of 64 bytes of channels, so that a
// stage of corner vectors takes 32 KB for every type.
template <typename scalar_t, int kCols>
using WmmaAsyncTiles = WmmaTiles<kCols, 64 / static_cast<int>(sizeof(scalar_t))>;

// Dynamic shared memory of the kernel below: 112 KB for 128-wide blocks (two blocks per SM on
// sm_90, whose SMs have 228 KB; one on sm_80), 102 KB for 64-wide ones.
template <typename scalar_t, int kCols>
constexpr size_t wmma_async_shared_bytes() {
  return sizeof(WmmaAsyncShared<scalar_t, scalar_t, WmmaAsyncTiles<scalar_t, kCols>>);
}

// Grid: (gemm_grid_x<BM, BN>(g), splits, groups); block: WmmaTiles<kCols>::kThreads; dynamic
// shared memory: wmma_async_shared_bytes<scalar_t, kCols>().
// scalar_t and mma_t as for deform_conv2d_implicit_gemm_wmma_kernel (c10::Half with __half,
// c10::BFloat16 with __nv_bfloat16, float with Tf32), and so are the arguments; the launcher
// guarantees what the copies need: input and wmat 16-byte aligned, and
// g.channel_runs_are_multiples_of(Vector16<scalar_t>::kSize).
template <typename scalar_t, typename mma_t, int kCols>
__global__ void __launch_bounds__(WmmaAsyncTiles<scalar_t, kCols>::kThreads,
                                  WmmaAsyncTiles<scalar_t, kCols>::kBlocksPerSM)
    deform_conv2d_implicit_gemm_wmma_async_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                                                  const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                                                  const scalar_t* __restrict__ mask, FieldStrides mask_strides,
                                                  const scalar_t* __restrict__ wmat,
                                                  const scalar_t* __restrict__ bias, scalar_t* __restrict__ out,
                                                  float* __restrict__ partials) {
#if defined(RCM_WMMA_AVAILABLE)
  using T = WmmaAsyncTiles<scalar_t, kCols>;
  using Mma = WarpTileMma<mma_t, T>;
  using In = typename Mma::In;
  using smem_t = typename In::smem_t;
  using Shared = WmmaAsyncShared<scalar_t, smem_t, T>;
  using Corners = TileCorners<float, T::kRows>;
  using Steps = ReductionSteps<T::kDepth>;
  static_assert(sizeof(scalar_t) == sizeof(smem_t), "the weight tile is copied bit for bit");
  constexpr int kVector = Vector16<scalar_t>::kSize;
  constexpr int kPitch = Mma::kPitch;
  constexpr int kVectorsPerRow = T::kDepth / kVector;
  // Items per thread: (row, vector) items of the A tile, (output channel, vector) ones of B.
  constexpr int kRowItems = T::kRows * kVectorsPerRow / T::kThreads;
  constexpr int kColItems = T::kCols * kVectorsPerRow / T::kThreads;
  static_assert(kRowItems * T::kThreads == T::kRows * kVectorsPerRow &&
                    kColItems * T::kThreads == T::kCols * kVectorsPerRow,
                "every thread takes the same number of items");

  RCM_DYNAMIC_SHARED(Shared, shared);
  const int tid = threadIdx.x;
  const GemmTile tile = gemm_tile<T::kRows, T::kCols>(g, blockIdx.x);
  const int64_t group = blockIdx.z;
  const int64_t cg = g.channels_per_group();

  // Issues step s's copies into `stage`, with the corners of its run. Item e of the A tile is the
  // same thread's in blend() below, so its copies need no barrier before the blend, only the wait.
  auto issue = [&](int stage, const Steps& s, const Corners& corners) {
    RCM_NO_UNROLL
    for (int item = 0; item < kRowItems; ++item) {
      const int e = tid + item * T::kThreads;
      const int r = e / kVectorsPerRow;
      const int ch0 = (e % kVectorsPerRow) * kVector;
      if (ch0 >= s.depth) continue;  // blend() writes zeros
      RCM_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int64_t pixel = corners.pixel[i][r];
        copy16_async(&shared->corner_vectors.raw[stage][i][r * T::kDepth + ch0],
                     pixel >= 0 ? input + pixel * g.channels + s.c0 + ch0 : input, pixel >= 0);
      }
    }
    // The sizes of the weight operand are recomputed at each step rather than kept through the
    // reduction: the 128-wide kernel has no registers to spare.
    const int64_t co0 = gemm_tile<T::kRows, T::kCols>(g, blockIdx.x).co0;
    const int64_t cog = g.out_channels / g.groups;
    const int64_t reduction = g.kernel_points() * cg;
    const int64_t w_col0 = s.k * cg + (s.c0 - group * cg);
    RCM_NO_UNROLL
    for (int item = 0; item < kColItems; ++item) {
      const int e = tid + item * T::kThreads;
      const int n = e / kVectorsPerRow;
      const int ch0 = (e % kVectorsPerRow) * kVector;
      const int64_t co = co0 + n;
      const bool fill = co < cog && ch0 < s.depth;
      copy16_async(&shared->b[stage][n * kPitch + ch0],
                   fill ? wmat + (group * cog + co) * reduction + w_col0 + ch0 : wmat, fill);
    }
  };
  // The A tile of the step whose copies are in `stage`: depth channels blended from their corner
  // vectors in float (zero-filled corners have weight 0), rounded once; zeros past depth, which
  // the zeros of the B tile meet.
  auto blend = [&](int stage, int depth, const Corners& corners) {
    RCM_NO_UNROLL
    for (int item = 0; item < kRowItems; ++item) {
      const int e = tid + item * T::kThreads;
      const int r = e / kVectorsPerRow;
      const int ch0 = (e % kVectorsPerRow) * kVector;
      float v[kVector];
      RCM_UNROLL
      for (int j = 0; j < kVector; ++j) v[j] = 0.0f;
      if (ch0 < depth) {
        RCM_UNROLL
        for (int i = 0; i < 4; ++i) {
          add_weighted<std::is_same_v<mma_t, __nv_bfloat16>>(v, corners.weight[i][r],
                       load16<scalar_t>(&shared->corner_vectors.raw[stage][i][r * T::kDepth + ch0]));
        }
      }
      Vector16<smem_t> rounded;
      RCM_UNROLL
      for (int j = 0; j < kVector; ++j) rounded.v[j] = In::from_float(v[j]);
      store16(shared->a + r * kPitch + ch0, rounded);
    }
  };
  // TF32 operands must be rounded, and the weight tile arrives as raw floats: each thread rounds
  // the vectors it copied, after its wait. (16-bit weights already are what the MMA reads.)
  auto round_weights = [&](int stage) {
    if constexpr (sizeof(smem_t) == sizeof(float)) {
      RCM_UNROLL
      for (int item = 0; item < kColItems; ++item) {
        const int e = tid + item * T::kThreads;
        smem_t* const b = &shared->b[stage][(e / kVectorsPerRow) * kPitch + (e % kVectorsPerRow) * kVector];
        Vector16<smem_t> x = load16<smem_t>(b);
        RCM_UNROLL
        for (int j = 0; j < kVector; ++j) x.v[j] = In::from_float(x.v[j]);
        store16(b, x);
      }
    }
  };

  // Fills corners[buffer] for the run after `s`, if s ends its run and one follows (threads of the
  // first kRows only): a run's corners are prepared while the block works on the step before it,
  // so that the offset and mask loads are in flight with the copies instead of stalling a barrier.
  auto prepare_following_run = [&](const Steps& s, int buffer) {
    if (!s.ends_run()) return;
    const typename Steps::Run r = s.following_run();
    if (r.k < s.points && tid < T::kRows) {
      set_tile_corners(shared->corners[buffer], tid, g, tile.row0, r.k, r.og, offset, offset_strides, mask,
                       mask_strides);
    }
  };

  Mma mma(tid / 32);
  Steps next(g, group, kernel_point_range(g, blockIdx.y, gridDim.y));  // the next step to issue
  if (!next.done()) {
    // Three corner buffers, taken in turn by consecutive runs: while a step is blended with its
    // run's corners, the next step is issued with its run's, and the run after that is prepared.
    // The buffer prepared at a step last served a run before that step's, whose readers (issue
    // and blend) finished before the previous barrier.
    const auto after = [](int buffer) { return buffer == 2 ? 0 : buffer + 1; };
    int run = 0;  // buffer of next's run
    if (tid < T::kRows) {
      set_tile_corners(shared->corners[run], tid, g, tile.row0, next.k, next.og, offset, offset_strides, mask,
                       mask_strides);
    }
    prepare_following_run(next, after(run));
    __syncthreads();  // corners written
    issue(0, next, shared->corners[run]);
    commit_async_copies();
    for (int stage = 0;; stage ^= 1) {
      // The step of `stage`, whose copies were issued last.
      const int depth = next.depth;
      const int step_run = run;
      next.next();
      const bool more = !next.done();
      if (more && next.first_of_run) run = after(run);
      __syncthreads();  // next's corners written; the previous step's MMAs done with a and b[stage ^ 1]
      if (more) {
        issue(stage ^ 1, next, shared->corners[run]);
        prepare_following_run(next, after(run));
      }
      commit_async_copies();
      wait_async_copies<1>();  // this thread's copies of `stage` have landed
      blend(stage, depth, shared->corners[step_run]);
      round_weights(stage);
      __syncthreads();  // the A tile, and every thread's copies of b[stage], complete
      mma.multiply(shared->a, shared->b[stage], depth);
      if (!more) break;
    }
  }
  mma.store(shared->corner_vectors.staging[tid / 32], tid % 32, g, tile.row0, tile.co0, group, bias, out, partials);
#endif  // RCM_WMMA_AVAILABLE
}

}  // namespace kernels
}  // namespace rcm_fsad
