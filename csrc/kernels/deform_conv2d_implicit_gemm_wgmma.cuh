// Hopper's asynchronous warpgroup MMA (wgmma, sm_90a) for the implicit-GEMM forward of DCNv2 in
// float16, bfloat16 and float32 (TF32, or split TF32 for float32's accuracy: Tf32Split), where the
// mma.sync kernel applies (mma_kernel_applies). It keeps that kernel's sampling (each thread blends
// its 16 bytes of channels of two rows into the A fragment words, which wgmma takes from registers
// in mma.m16n8k16's or m16n8k8's layout) and changes how it multiplies:
//   * a warpgroup (4 warps, 64 rows) multiplies its rows by all the block's columns (64, 128 or 256:
//     the conv group's output channels up to 256, or 128 with split TF32) with wgmma, B read by the
//     tensor cores straight from shared memory: no weight fragments in registers, no shared-memory
//     loads of them, and for a warp's share of 16 x kCols x 16 multiply-adds (16-bit) one instruction
//     instead of kCols / 8 mma.sync;
//   * the MMAs run asynchronously, and a step's are queued before the step before it is waited for:
//     a step issues its wgmma, waits for the previous step's (wgmma.wait_group 1), then blends the
//     next step's A fragments into the registers those freed and issues the loads of the step after
//     it, so the tensor cores have a step queued while the warps sample, through the barrier and the
//     next issue. Corner vectors are loaded a whole step before they are blended, so the loads'
//     latency hides behind a step of MMAs and sampling instead of stalling the warp;
//   * each element is sampled once where the block spans the group's columns, with no trading of
//     rows between warps (split TF32 above 128 columns samples each element once per block along
//     them: the second part's fragments do not fit beside 128 accumulators a thread);
//   * the weights are repacked beforehand as the image of a block's step in shared memory
//     (deform_conv2d_wgmma_weight_tiles_kernel: B K-major, core matrices of 8 output channels x 16
//     bytes; with split TF32 both parts), which the block copies with cp.async into one of three
//     stages: the step's MMAs read one, the previous step's may still read another, the next step's
//     weights land in the third;
//   * one barrier per step: the next step's weights have landed (each thread fences its copies for
//     the tensor cores' reads, fence.proxy.async), and every warpgroup has finished the MMAs of the
//     step before, whose stage the copies that the next step issues overwrite.
// Two warpgroups a block, one block per SM (accumulators: kCols / 2 registers a thread).
// Split TF32 takes three MMAs a product, as the mma.sync kernel does (Tf32Split): A's small part times
// B's big, A's big times B's small, then big times big.
// Torch-free: launched by csrc/cuda/deform_conv2d_forward_cuda.cu and by the CPU emulation harness; its
// body and its weight repack's are empty where wgmma is not compiled (RCM_WGMMA_AVAILABLE: sm_90a),
// which the launcher checks at run time (wgmma_code_loaded).
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

// The block width for a conv group of `cog` output channels and mma_t (MmaParts): as wide as the
// group, up to 256, or 128 with two parts (at 256 the second part's fragments spill).
template <typename mma_t>
RCM_HD int wgmma_tile_cols(int64_t cog) {
  return cog > 128 && MmaParts<mma_t>::kParts == 1 ? 256 : cog > 64 ? 128 : 64;
}

// f(WgmmaTiles<wgmma_tile_cols<mma_t>(cog)>{}): the one place that turns the width into the kernel's
// template argument.
template <typename mma_t, typename F>
decltype(auto) with_wgmma_tiles(int64_t cog, F&& f) {
  switch (wgmma_tile_cols<mma_t>(cog)) {
    case 256:
      if constexpr (MmaParts<mma_t>::kParts == 1) return f(WgmmaTiles<256>{});
      [[fallthrough]];  // not reached: two parts are at most 128 wide
    case 128: return f(WgmmaTiles<128>{});
    default: return f(WgmmaTiles<64>{});
  }
}

// The column blocks of a conv group of `cog` output channels.
template <typename mma_t>
RCM_HD int64_t wgmma_column_blocks(int64_t cog) {
  const int64_t cols = wgmma_tile_cols<mma_t>(cog);
  return (cog + cols - 1) / cols;
}

// The step's channel that element e of a core matrix row holds, for MMA m of the step's two and
// half h of its reduction: the MMA's k follows the A fragments' order (to_a_fragments), where
// thread t's 16 bytes (kVector channels, in 4 words of kVector / 4) give its fragment words t
// (word 2 m of the thread's) and t + 4 (word 2 m + 1). A row holds 16 bytes of k: words 4 h ..
// 4 h + 3, so element e is in thread e / W's word 2 m + h, at e % W (W = kVector / 4 elements a word).
template <int kVector>
RCM_HD int wgmma_step_channel(int m, int h, int e) {
  constexpr int kPerWord = kVector / 4;
  return kVector * (e / kPerWord) + kPerWord * (2 * m + h) + e % kPerWord;
}

// The weights as the image of each block's step in shared memory: for conv group G, kernel point k,
// step s of the point (mma_steps_per_point), column block b, part p (MmaParts), MMA m of the step's
// two, half h of its reduction and output channel n of the block (kCols = wgmma_tile_cols), 16
// bytes (V = Vector16<scalar_t>::kSize elements): those of the MMA's k = V h .. V h + V - 1 for output
// channel kCols b + n, element e being the step's channel c0 + wgmma_step_channel<V>(m, h, e); zeros
// past its depth and the group's output channels; TF32 weights already rounded (Tf32Split: part 0
// big, part 1 small).
// Shape (G, K, mma_steps_per_point, wgmma_column_blocks, kParts, 2, 2, kCols, V).
template <typename scalar_t, typename mma_t>
RCM_HD int64_t wgmma_weight_tile_elements(const DeformConvGeometry& g) {
  const int64_t cog = g.out_channels / g.groups;
  return g.groups * g.kernel_points() * mma_steps_per_point<scalar_t>(g) * wgmma_column_blocks<mma_t>(cog) *
         MmaParts<mma_t>::kParts * 4 * wgmma_tile_cols<mma_t>(cog) * Vector16<scalar_t>::kSize;
}

// The buffer of the wgmma kernel's repacked weights: the zero pixel, then the tiles.
template <typename scalar_t, typename mma_t>
RCM_HD int64_t wgmma_weight_buffer_elements(const DeformConvGeometry& g) {
  return zero_pixel_elements<scalar_t>(g) + wgmma_weight_tile_elements<scalar_t, mma_t>(g);
}

// Dynamic shared memory of the kernel below: each warp's corners of its 16 rows; three stages of the
// block's weights (the step being multiplied, the step before, whose MMAs may still run, and the
// next one in flight), [stage][p][m][h][n]: for part p and MMA m, B's two core matrices along k
// kCols x 16 bytes apart, those along n 128 bytes apart. 54 KB 256 wide, and 128 wide with two parts.
template <int kCols, int kParts>
struct WgmmaShared {
  static constexpr int kStages = 3;
  RowCorners corners[WgmmaTiles<kCols>::kWarps][WgmmaTiles<kCols>::kWarpRows];
  Vector16<uint32_t> weights[kStages][kParts][2][2][kCols];
};

template <int kCols, typename mma_t>
constexpr size_t wgmma_shared_bytes() {
  return sizeof(WgmmaShared<kCols, MmaParts<mma_t>::kParts>);
}

// The zero pixel and then the weight tiles above from wmat: (C_out, K, C_g), weight_matrix()'s layout,
// into `buffer` (wgmma_weight_buffer_elements<scalar_t, mma_t>(g) elements), one 16-byte vector per
// thread of a grid-stride loop. For geometries with mma_steps_per_point<scalar_t>(g) > 0; scalar_t
// and mma_t as for the kernel below.
template <typename scalar_t, typename mma_t>
__global__ void deform_conv2d_wgmma_weight_tiles_kernel(DeformConvGeometry g, const scalar_t* __restrict__ wmat,
                                                        scalar_t* __restrict__ buffer) {
#if defined(RCM_WGMMA_AVAILABLE)
  constexpr int kVector = Vector16<scalar_t>::kSize;
  constexpr int kParts = MmaParts<mma_t>::kParts;
  const int64_t steps = mma_steps_per_point<scalar_t>(g);
  const int64_t cog = g.out_channels / g.groups;
  const int64_t cg = g.channels_per_group();
  const int64_t points = g.kernel_points();
  const int64_t cols = wgmma_tile_cols<mma_t>(cog);
  const int64_t blocks = wgmma_column_blocks<mma_t>(cog);
  repack_after_zero_pixel(g, wgmma_weight_tile_elements<scalar_t, mma_t>(g) / kVector, buffer, [&](int64_t v) {
    const int64_t n = v % cols;
    const int h = static_cast<int>(v / cols % 2);
    const int m = static_cast<int>(v / (2 * cols) % 2);
    const int part = static_cast<int>(v / (4 * cols) % kParts);
    const int64_t block = v / (4 * cols * kParts) % blocks;
    const int64_t step = v / (4 * cols * kParts * blocks) % steps;
    const int64_t k = v / (4 * cols * kParts * blocks * steps) % points;
    const int64_t group = v / (4 * cols * kParts * blocks * steps * points);
    ReductionSteps<mma_step_depth<scalar_t>()> s(g, group, {static_cast<int>(k), static_cast<int>(k) + 1});
    for (int64_t i = 0; i < step; ++i) s.next();
    const int64_t co = block * cols + n;
    const Vector16<uint32_t> zeros{};
    Vector16<scalar_t> x = load16<scalar_t>(&zeros);
    RCM_UNROLL
    for (int e = 0; e < kVector; ++e) {
      const int c = wgmma_step_channel<kVector>(m, h, e);
      if (co >= cog || c >= s.depth) continue;
      x.v[e] = weight_part<mma_t>(wmat[((group * cog + co) * points + k) * cg + (s.c0 + c - group * cg)], part);
    }
    return x;
  });
#endif  // RCM_WGMMA_AVAILABLE
}

// Grid: (gemm_grid_x<T::kRows, kCols>(g), splits, groups) with T = WgmmaTiles<kCols>; block:
// T::kThreads; dynamic shared memory: wgmma_shared_bytes<kCols, mma_t>(). scalar_t and mma_t:
// c10::Half with __half, c10::BFloat16 with __nv_bfloat16, float with Tf32 or Tf32Split; the
// arguments as for the mma.sync kernel, but the weights come as tiles after the zero pixel, in
// `buffer` (deform_conv2d_wgmma_weight_tiles_kernel, with the same mma_t). The launcher guarantees
// input and buffer 16-byte aligned, mma_kernel_applies<scalar_t>(g) and
// kCols = wgmma_tile_cols<mma_t>(C_out / G).
template <typename scalar_t, typename mma_t, int kCols>
__global__ void __launch_bounds__(WgmmaTiles<kCols>::kThreads, WgmmaTiles<kCols>::kBlocksPerSM)
    deform_conv2d_implicit_gemm_wgmma_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                                             const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                                             const scalar_t* __restrict__ mask, FieldStrides mask_strides,
                                             const scalar_t* __restrict__ buffer, const scalar_t* __restrict__ bias,
                                             scalar_t* __restrict__ out, float* __restrict__ partials) {
#if defined(RCM_WGMMA_AVAILABLE)
  using T = WgmmaTiles<kCols>;
  using Steps = ReductionSteps<mma_step_depth<scalar_t>()>;
  using input_t = typename MmaParts<mma_t>::input_t;  // what the MMAs take
  constexpr int kVector = Vector16<scalar_t>::kSize;
  constexpr int kParts = MmaParts<mma_t>::kParts;
  static_assert(sizeof(typename MmaInput<input_t>::smem_t) == sizeof(scalar_t), "weights are read as the MMA's words");

  using Shared = WgmmaShared<kCols, kParts>;
  RCM_DYNAMIC_SHARED(Shared, shared);
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
    if (lane < T::kWarpRows) {
      corners[lane].set(row_live ? masked_corners_of<float>(g, px, s.k, field) : no_corners<float>(),
                        reinterpret_cast<const char*>(input), pixel_bytes, reinterpret_cast<const char*>(buffer));
    }
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
    const uint32_t channel_bytes = static_cast<uint32_t>((s.c0 + t * kVector) * sizeof(scalar_t));
    RCM_UNROLL
    for (int h = 0; h < 2; ++h) {
      const RowCorners& c = corners[quad + 8 * h];
      f.weight[h] = load16<float>(c.weight);
      fetch_corner_vectors(c, channel_bytes, f.live, f.raw[h]);
    }
  };
  // Keeps the compiler from moving accesses to the accumulators across this point
  // (wgmma_fence_operand): the MMAs in flight write them behind its back.
  auto fence_accumulators = [&] {
    RCM_UNROLL
    for (int i = 0; i < kCols / 2; ++i) wgmma_fence_operand(acc[i]);
  };
  // A step's A fragments: a[p][m], part p of its MMA m.
  using Fragments = uint32_t[kParts][2][4];
  // Keeps the compiler from moving accesses to a's registers across this point (wgmma_fence_operand).
  auto fence_fragments = [](Fragments& a) {
    RCM_UNROLL
    for (int p = 0; p < kParts; ++p) {
      RCM_UNROLL
      for (int m = 0; m < 2; ++m) {
        RCM_UNROLL
        for (int i = 0; i < 4; ++i) wgmma_fence_operand(a[p][m][i]);
      }
    }
  };
  // The step's A fragments from the fetched corner vectors.
  auto blend = [&](const Fetched& f, Fragments& a) {
    uint32_t w[2][kParts][4];
    RCM_UNROLL
    for (int h = 0; h < 2; ++h) blend_corner_vectors<mma_t>(f.weight[h], f.raw[h], f.live, w[h]);
    to_a_fragments(w, a);
  };

  // The block's weights of a step: its image at b (kVector-element vectors, [p][m][h][n] as a stage),
  // copied flat into stage `stage` by all its threads, 16 bytes at a time.
  constexpr int kStepVectors = kParts * 4 * kCols;
  constexpr int kCopies = kStepVectors / T::kThreads;  // per thread and step
  static_assert(kCopies * T::kThreads == kStepVectors, "the block's threads share its weight copies evenly");
  const int64_t step_stride = wgmma_column_blocks<mma_t>(cog) * kStepVectors * kVector;
  auto copy_weights = [&](const scalar_t* b, int stage) {
    RCM_UNROLL
    for (int n = 0; n < kCopies; ++n) {
      const int chunk = threadIdx.x + n * T::kThreads;
      copy16_async(&shared->weights[stage][0][0][0][0] + chunk, b + chunk * kVector, true);
    }
    commit_async_copies();
  };
  // The step's MMAs on stage `stage`, issued for the warpgroup: its two MMAs; with two parts each as
  // A's small part times B's big, A's big times B's small (the smaller terms first), then big times big.
  auto multiply = [&](Fragments& a, int stage) {
    fence_accumulators();
    // A's words in their registers before wgmma.fence: nvcc put the moves of TF32 words from float
    // registers between it and the wgmma, where they define the wgmma's inputs.
    fence_fragments(a);
    wgmma_fence();
    RCM_UNROLL
    for (int m = 0; m < 2; ++m) {
      uint64_t b[kParts];  // B's parts
      RCM_UNROLL
      for (int p = 0; p < kParts; ++p) b[p] = wgmma_descriptor(&shared->weights[stage][p][m][0][0], kCols * 16, 128);
      if constexpr (kParts == 2) {
        wgmma_m64<kCols, input_t>(acc, a[1][m], b[0]);
        wgmma_m64<kCols, input_t>(acc, a[0][m], b[1]);
      }
      wgmma_m64<kCols, input_t>(acc, a[0][m], b[0]);
    }
    wgmma_commit_group();
  };
  // Waits until at most `pending` (a std::integral_constant) of the warpgroup's committed steps of
  // MMAs are unfinished; a, the A fragments of the last step it completes, stays live until then
  // (else the compiler may give other values its registers while the tensor cores still read them).
  auto wait_multiply = [&](auto pending, Fragments& a) {
    wgmma_wait_group<decltype(pending)::value>();
    fence_accumulators();
    fence_fragments(a);
  };
  // The step's weights, copied by every thread, landed and visible to the tensor cores' reads.
  auto weights_landed = [] {
    wait_async_copies<0>();
    wgmma_fence_shared_writes();
    __syncthreads();
  };

  const KernelPointRange points = kernel_point_range(g, blockIdx.y, gridDim.y);
  Steps s(g, group, points);
  if (!s.done()) {  // the same for the whole block, as every barrier below
    const int steps_per_point = static_cast<int>(mma_steps_per_point<scalar_t>(g));
    const scalar_t* b = buffer + zero_pixel_elements<scalar_t>(g) +
                        ((group * g.kernel_points() + s.k) * steps_per_point * wgmma_column_blocks<mma_t>(cog) +
                         tile.co0 / kCols) * kStepVectors * kVector;
    int stage = 0;
    copy_weights(b, stage);
    if (row_live) field = load_field(s.k, s.og);
    start_run(s);
    Fetched f;
    fetch(s, f);
    // The A fragments of two consecutive steps, in turns: the step being multiplied, and the one
    // before it, whose MMAs may run until the step's wait, then the next step's. Zeros: the first
    // step's wait keeps a[1] live before anything is blended into it.
    Fragments a[2] = {};
    blend(f, a[0]);
    Steps next = s;  // the step after the one being multiplied, whose corners f holds
    // Moves `next` on by a step and fetches its corners into f.
    auto advance = [&] {
      next.next();
      if (!next.done()) {
        if (next.first_of_run) start_run(next);
        fetch(next, f);
      }
    };
    advance();
    weights_landed();
    // Step k: its A in x, its B in `stage`, f holding the corners of step k + 1 (`next`, which must
    // exist). Issues k's MMAs, copies k + 1's weights, waits for k - 1's MMAs (y's), blends k + 1's A
    // into y and fetches the corners of k + 2.
    auto step = [&](Fragments& x, Fragments& y) {
      multiply(x, stage);
      // The stage after this one was last read by the MMAs of two steps before, which every
      // warpgroup waited for before the last barrier.
      const int following = stage == Shared::kStages - 1 ? 0 : stage + 1;
      b += step_stride;
      copy_weights(b, following);
      wait_multiply(std::integral_constant<int, 1>{}, y);  // k - 1's MMAs: y is free
      blend(f, y);
      advance();
      stage = following;
      // Also: every warpgroup has finished the MMAs of step k - 1.
      weights_landed();
    };
    // The last step, its A in x, the step before's in y: waits for both.
    auto last_step = [&](Fragments& x, Fragments& y) {
      multiply(x, stage);
      wait_multiply(std::integral_constant<int, 0>{}, x);
      fence_fragments(y);
    };
    // Unrolled by two, so that which registers hold which step's fragments is fixed at compile time,
    // and leaving the loop only between pairs (ptxas serializes the MMAs where a step can leave it).
    // The steps are counted, not read from `next`: mma_steps_per_point is the steps ReductionSteps
    // takes at each kernel point (the emulator's test mma_steps checks it in every conv group).
    int left = (points.end - points.begin) * steps_per_point;
    for (; left > 2; left -= 2) {
      step(a[0], a[1]);
      step(a[1], a[0]);
    }
    if (left == 2) {
      step(a[0], a[1]);
      last_step(a[1], a[0]);
    } else {
      last_step(a[0], a[1]);
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
