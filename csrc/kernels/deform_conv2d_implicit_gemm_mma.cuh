// Tensor-core implicit-GEMM forward of DCNv2 whose sampled operand is built in registers, for
// float16, bfloat16 and TF32 when every run of channels is whole 16-byte vectors.
// The WMMA kernels sample the A tile into shared memory and load it back as fragments: per step, a
// 128 x 128 block moves about 128 KB through shared memory (corner vectors, A and B tiles and
// their fragment loads), which bounds it near a third of the tensor cores' rate. Here each warp
// multiplies 32 rows x kWarpCols output channels with mma.sync (mma_sync.cuh), and builds its A
// fragments in registers:
//   * each thread of a quad (lane % 4) samples its own 16 bytes of channels of the quad's rows
//     from the four corner vectors, in float, and its words are, unchanged, the A fragment words
//     of the step's two MMAs: the reduction is ordered so that thread t's channels are the words
//     t and t + 4 of both (see blend_row), and the weights are read in the same order;
//   * where two warps multiply the same rows (blocks of 128 rows x 256 columns above 128 output
//     channels a group; with split TF32, 128 x 128 above 64), each samples one of the two row tiles
//     and they trade their words through shared memory, so that every element is sampled once: half the loads and the blending per MMA of
//     a warp that samples all its rows, and twice the MMAs between a row's loads and its blend;
//   * the weights are repacked beforehand in the order the lanes read them
//     (deform_conv2d_mma_weight_fragments_kernel): the block's column tiles of a step are
//     contiguous, 512 bytes each, with nothing to check. The block copies the next step's into
//     shared memory with cp.async while it multiplies, once for all its warps;
//   * one barrier per step: the next step's weights have landed, and the traded words are there;
//   * a corner vector is one load, without a predicate: a corner outside the image reads a pixel of
//     zeros, which comes first in the repacked weights' buffer (zero_pixel_elements);
//   * the corners of the warp's rows, computed once per (kernel point, offset group) run, are in
//     the warp's own shared memory (__syncwarp around them);
//   * a warp loads the next step's corner vectors of a row before multiplying a share of the
//     columns and blends them after, so that the loads are in flight while the tensor cores work
//     (one block per SM: the accumulators and all this take up to the whole register file).
// Same reduction steps (64 bytes of channels) and grid layout (launch_implicit_gemm's) as the cp.async
// WMMA kernel, with tiles of its own (MmaTiles).
// For float32 with TF32 off it keeps float32's accuracy on TF32 tensor cores (Tf32Split, "3xTF32"):
// every operand as the sum of two TF32 numbers, and three MMAs where TF32 takes one.
// Torch-free: launched by csrc/cuda/deform_conv2d_forward_cuda.cu and by the CPU emulation harness.
#pragma once

#include <type_traits>

#include "async_copy.cuh"
#include "deform_conv2d_tile_corners.cuh"
#include "mma_sync.cuh"
#include "vector16.cuh"

namespace rcm_fsad {
namespace kernels {

// Selects float32 at float32's accuracy on TF32 tensor cores: an operand x is split as big + small,
// big = x rounded to TF32 and small = the remainder rounded to TF32 (x to about 2^-22 of itself),
// and a product as small x big + big x small + big x big, three TF32 MMAs into the same float sums;
// small x small (about 2^-22 of the product) is dropped. A non-finite x is carried whole by its
// small part (big = 0), so that an infinite sample times a finite weight stays infinite, as in
// float32, instead of meeting a zero small part (inf x 0 = NaN); only a product of two non-finite
// operands differs from float32 (NaN for inf).
struct Tf32Split {};

// What the kernel below multiplies for its mma_t: the MMA's input type, and in how many parts an
// operand goes (Tf32Split: two TF32 ones; else one, the operand rounded to the input type).
template <typename mma_t>
struct MmaParts {
  using input_t = mma_t;
  static constexpr int kParts = 1;
};
template <>
struct MmaParts<Tf32Split> {
  using input_t = Tf32;
  static constexpr int kParts = 2;
};

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
  // The row tiles a warp samples itself: all of them, or with two warps along the columns (the
  // same rows) one each, the other coming from its partner.
  static constexpr int kSampledRowTiles = kRowTiles / kWarpsAlongCols;
  // One block per SM, with the whole register file: up to 128 accumulators per thread, beside the
  // fragments of two steps and the corner vectors in flight.
  static constexpr int kBlocksPerSM = 1;
};

// The warps for a conv group of `cog` output channels: as wide as the group up to 128 columns, so
// that no warp multiplies only zeros; two along the columns above that. With two parts (Tf32Split)
// at most 64 wide: the second part's fragments do not fit beside 128 accumulators a thread
// (ptxas spills; 64 wide it takes 220 registers).
template <typename mma_t>
RCM_HD int mma_warp_cols(int64_t cog) {
  return cog > 64 && MmaParts<mma_t>::kParts == 1 ? 128 : 64;
}
template <typename mma_t>
RCM_HD int mma_warps_along_cols(int64_t cog) {
  return cog > mma_warp_cols<mma_t>(cog) ? 2 : 1;
}

// f(MmaTiles<mma_warp_cols, mma_warps_along_cols>{}) for a conv group of `cog` output channels:
// the one place that turns the layout into the kernel's template arguments.
template <typename mma_t, typename F>
decltype(auto) with_mma_tiles(int64_t cog, F&& f) {
  if constexpr (MmaParts<mma_t>::kParts == 1) {
    if (mma_warp_cols<mma_t>(cog) == 128) {
      if (mma_warps_along_cols<mma_t>(cog) == 2) return f(MmaTiles<128, 2>{});
      return f(MmaTiles<128, 1>{});
    }
  }
  if (mma_warps_along_cols<mma_t>(cog) == 2) return f(MmaTiles<64, 2>{});
  return f(MmaTiles<64, 1>{});
}

// A reduction step: 64 bytes of channels, 16 per thread of a quad, two MMAs deep.
template <typename scalar_t>
constexpr int mma_step_depth() {
  return 4 * Vector16<scalar_t>::kSize;
}

// The steps of one kernel point (ReductionSteps<mma_step_depth>), when they are the same for every
// conv group: each group's channels lie in one offset group or are whole offset groups, as in
// every common layout. 0 otherwise (mixed layouts take the WMMA kernels).
template <typename scalar_t>
RCM_HD int64_t mma_steps_per_point(const DeformConvGeometry& g) {
  constexpr int64_t depth = mma_step_depth<scalar_t>();
  const int64_t cg = g.channels_per_group();
  const int64_t run = g.channels_per_offset_group();
  if (run % cg == 0) return (cg + depth - 1) / depth;
  if (cg % run == 0) return cg / run * ((run + depth - 1) / depth);
  return 0;
}

// Column tiles of 8 output channels of a conv group in the weight fragments: the group's output
// channels padded to whole blocks, so that a block copies and multiplies without checking which of
// its columns exist.
template <typename mma_t>
RCM_HD int64_t mma_column_tiles(int64_t cog) {
  const int64_t block = mma_warp_cols<mma_t>(cog) * mma_warps_along_cols<mma_t>(cog);
  return (cog + block - 1) / block * block / 8;
}

// The weights in the order the kernel's lanes read them, so that a warp reads one column tile of a
// step as 512 contiguous bytes a part, with no bounds to check: for conv group G, kernel point k,
// step s of the point, column tile j, part p (MmaParts) and lane 4 q + t, the 16 bytes of output
// channel 8 j + q at the step's channels [c0 + t V, c0 + (t + 1) V) (V = Vector16<scalar_t>::kSize),
// zeros past the step's depth and the group's output channels; TF32 weights already rounded
// (Tf32Split: part 0 big, part 1 small).
// Shape (G, K, mma_steps_per_point, mma_column_tiles(C_out / G), kParts, 32, V).
template <typename scalar_t, typename mma_t>
RCM_HD int64_t mma_weight_fragment_elements(const DeformConvGeometry& g) {
  return g.groups * g.kernel_points() * mma_steps_per_point<scalar_t>(g) *
         mma_column_tiles<mma_t>(g.out_channels / g.groups) * MmaParts<mma_t>::kParts * 32 * Vector16<scalar_t>::kSize;
}

// A pixel of zeros, g.channels elements rounded up to whole 16-byte vectors, which the tensor-core
// kernels' corners outside the image read (RowCorners) instead of loading under a predicate and
// zeroing the registers first: about 36 instructions fewer a warp and step (wgmma, bfloat16). It
// comes first in the buffer of the repacked weights, whose repack kernel writes it, so that the
// kernels find it at their weights argument for nothing.
template <typename scalar_t>
RCM_HD int64_t zero_pixel_elements(const DeformConvGeometry& g) {
  constexpr int64_t kVector = Vector16<scalar_t>::kSize;
  return (g.channels + kVector - 1) / kVector * kVector;
}

// The buffer of the mma.sync kernel's repacked weights: the zero pixel, then the fragments.
template <typename scalar_t, typename mma_t>
RCM_HD int64_t mma_weight_buffer_elements(const DeformConvGeometry& g) {
  return zero_pixel_elements<scalar_t>(g) + mma_weight_fragment_elements<scalar_t, mma_t>(g);
}

// The grid-stride loop of a repack kernel, one 16-byte vector a thread: `buffer` gets the zero pixel,
// then weights(v) for each vector v < weight_vectors of the repacked weights.
template <typename scalar_t, typename F>
__device__ __forceinline__ void repack_after_zero_pixel(const DeformConvGeometry& g, int64_t weight_vectors,
                                                        scalar_t* buffer, F&& weights) {
  constexpr int kVector = Vector16<scalar_t>::kSize;
  const int64_t zero_vectors = zero_pixel_elements<scalar_t>(g) / kVector;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < zero_vectors + weight_vectors;
       u += stride) {
    const Vector16<uint32_t> zeros{};
    store16(buffer + u * kVector, u < zero_vectors ? load16<scalar_t>(&zeros) : weights(u - zero_vectors));
  }
}

// The corners of one of a warp's rows, for the run being multiplied: the address of each corner's
// pixel (the zero pixel's where the sample does not read it: outside the image, or on the -1 border)
// and its weight, read as three 16-byte words.
struct alignas(16) RowCorners {
  const char* pixel[4];
  float weight[4];

  // From the corners' pixel indices in the NHWC batch at `input` (pixels of pixel_bytes each).
  __device__ __forceinline__ void set(const MaskedCorners<float>& c, const char* input, uint32_t pixel_bytes,
                                      const char* zero_pixel) {
    RCM_UNROLL
    for (int i = 0; i < 4; ++i) {
      // 32-bit indices (mma_kernel_applies): one wide multiply-add.
      pixel[i] = c.pixel[i] >= 0 ? input + static_cast<uint64_t>(static_cast<uint32_t>(c.pixel[i])) * pixel_bytes
                                 : zero_pixel;
      weight[i] = c.weight[i];
    }
  }
};

// Dynamic shared memory of the kernel below: each warp's corners of its rows (RowCorners); two
// stages of the block's weight fragments (the step being multiplied, and the next one in flight),
// lane l's 16 bytes of part p of the block's column tile j at [j][p][l]; and, with two warps along
// the columns, two buffers of each warp's words of the rows it sampled, [row tile][row h][part][lane]
// (a warp writes one while its partner may still read the other). 60 KB for 128 x 256 blocks, 32 KB
// for 256 x 128; with two parts (Tf32Split) 76 KB for 128 x 128 and 36 KB for 256 x 64.
template <typename Tiles, int kParts>
struct MmaShared {
  static constexpr int kStages = 2;
  static constexpr int kTradingWarps = Tiles::kWarpsAlongCols > 1 ? Tiles::kWarps : 1;  // 1: unused
  RowCorners corners[Tiles::kWarps][32];
  Vector16<uint32_t> weights[kStages][Tiles::kCols / 8][kParts][32];
  Vector16<uint32_t> sampled[2][kTradingWarps][Tiles::kSampledRowTiles][2][kParts][32];
};

template <typename Tiles, typename mma_t>
constexpr size_t mma_shared_bytes() {
  return sizeof(MmaShared<Tiles, MmaParts<mma_t>::kParts>);
}

// What every layout with_mma_tiles picks stays within: every sm_80+ device gives a block at least
// 99 KB (sm_86, sm_89, sm_120), so the launcher needs no check.
constexpr size_t kMmaMaxSharedBytes = 76 * 1024;

// Whether the kernel below takes a forward of tensors of scalar_t (with 16-byte aligned input and
// weights): every run of channels whole 16-byte vectors, its steps alike in every conv group, and
// pixel indices and a pixel's bytes within 32 bits (its unsigned wide multiply-adds).
template <typename scalar_t>
RCM_HD bool mma_kernel_applies(const DeformConvGeometry& g) {
  return g.channel_runs_are_multiples_of(Vector16<scalar_t>::kSize) && mma_steps_per_point<scalar_t>(g) > 0 &&
         g.batch * g.height * g.width <= int64_t{0x7fffffff} &&
         g.channels * static_cast<int64_t>(sizeof(scalar_t)) <= int64_t{0xffffffff};
}

#if defined(RCM_WMMA_AVAILABLE)
// x in the parts of mma_t (MmaParts): rounded to its input type, or for Tf32Split as big + small
// (see there; a non-finite x in the small part).
template <typename mma_t, typename In = MmaInput<typename MmaParts<mma_t>::input_t>>
__device__ __forceinline__ void to_parts(float x, typename In::smem_t (&parts)[MmaParts<mma_t>::kParts]) {
  parts[0] = In::from_float(x);
  if constexpr (MmaParts<mma_t>::kParts == 2) {
    if (fabsf(parts[0]) <= 3.40282347e+38f) {  // FLT_MAX: false for inf and NaN
      parts[1] = In::from_float(x - parts[0]);
    } else {
      parts[0] = 0.0f;
      // The MMA reads its TF32 bits: a NaN whose payload is all in the low 13 would read as inf.
      parts[1] = x == x ? x : float_from_bits(0x7fffffffu);
    }
  }
}

// Part `part` (MmaParts) of weight w as the weights repacked for the MMAs hold it: for TF32, w rounded
// to TF32 (one part) or its big (0) or small (1) part; for the 16-bit types w itself.
template <typename mma_t, typename scalar_t>
__device__ __forceinline__ scalar_t weight_part(scalar_t w, int part) {
  if constexpr (std::is_same_v<typename MmaParts<mma_t>::input_t, Tf32>) {
    float parts[MmaParts<mma_t>::kParts];
    to_parts<mma_t>(w, parts);
    return part == 0 ? parts[0] : parts[MmaParts<mma_t>::kParts - 1];
  } else {
    return w;
  }
}

// 16 bytes as the four 32-bit words that MMA fragments are made of.
template <typename T>
__device__ __forceinline__ void to_words(const Vector16<T>& x, uint32_t (&w)[4]) {
  const Vector16<uint32_t> u = load16<uint32_t>(&x);
  RCM_UNROLL
  for (int j = 0; j < 4; ++j) w[j] = u.v[j];
}

// A row's four corner vectors at a thread's 16 bytes of a step's channels, `channel_bytes` into
// each corner's pixel: raw[c] from c.pixel[c] (the zero pixel's for a corner the sample does not
// read). Past the step's depth (!live) each reads the first 16 bytes of its pixel instead, which are
// there to read whatever the depth, and which blend_corner_vectors does not use: every load happens,
// with no predicate and no zeroing of its registers.
template <typename scalar_t>
__device__ __forceinline__ void fetch_corner_vectors(const RowCorners& c, uint32_t channel_bytes, bool live,
                                                     Vector16<scalar_t> (&raw)[4]) {
  const uint32_t at = live ? channel_bytes : 0u;
  RCM_UNROLL
  for (int i = 0; i < 4; ++i) raw[i] = load16_global_nc<scalar_t>(c.pixel[i] + at);
}

// A row's sample from its corner vectors and their weights, in float, as the MMA's words in its parts
// (w[p]: part p of MMA type mma_t, MmaParts). Past the step's depth (!live) the words are zeros
// without a blend: an infinite mask's weight times those zeros would be NaN, and the MMAs would
// spread it over the row (the other kernels blend only within the depth too).
template <typename mma_t, typename scalar_t>
__device__ __forceinline__ void blend_corner_vectors(const Vector16<float>& weight, const Vector16<scalar_t> (&raw)[4],
                                                     bool live, uint32_t (&w)[MmaParts<mma_t>::kParts][4]) {
  using smem_t = typename MmaInput<typename MmaParts<mma_t>::input_t>::smem_t;
  constexpr int kVector = Vector16<scalar_t>::kSize;
  constexpr int kParts = MmaParts<mma_t>::kParts;
  float v[kVector];
  RCM_UNROLL
  for (int j = 0; j < kVector; ++j) v[j] = 0.0f;
  if (live) {
    RCM_UNROLL
    for (int c = 0; c < 4; ++c) add_weighted<std::is_same_v<mma_t, __nv_bfloat16>>(v, weight.v[c], raw[c]);
  }
  Vector16<smem_t> parts[kParts];
  RCM_UNROLL
  for (int j = 0; j < kVector; ++j) {
    smem_t x[kParts];
    to_parts<mma_t>(v[j], x);
    RCM_UNROLL
    for (int p = 0; p < kParts; ++p) parts[p].v[j] = x[p];
  }
  RCM_UNROLL
  for (int p = 0; p < kParts; ++p) to_words(parts[p], w[p]);
}

// A row tile's A fragments of a step's two 16-deep MMAs (a[p][m]: part p, MMA m) from the words of
// its rows q (w[0]) and q + 8 (w[1]), thread t's 16 bytes of the step's channels each: its words 0
// and 1 are its words t and t + 4 of the first MMA, words 2 and 3 those of the second (the
// reduction's order, which the weights follow).
template <int kParts>
__device__ __forceinline__ void to_a_fragments(const uint32_t (&w)[2][kParts][4], uint32_t (&a)[kParts][2][4]) {
  RCM_UNROLL
  for (int p = 0; p < kParts; ++p) {
    RCM_UNROLL
    for (int m = 0; m < 2; ++m) {
      a[p][m][0] = w[0][p][2 * m];
      a[p][m][1] = w[1][p][2 * m];
      a[p][m][2] = w[0][p][2 * m + 1];
      a[p][m][3] = w[1][p][2 * m + 1];
    }
  }
}
#endif  // RCM_WMMA_AVAILABLE

// The zero pixel and then the weight fragments above from wmat: (C_out, K, C_g), weight_matrix()'s
// layout, into `buffer` (mma_weight_buffer_elements<scalar_t, mma_t>(g) elements), one 16-byte vector
// per thread of a grid-stride loop. For geometries with mma_steps_per_point<scalar_t>(g) > 0.
template <typename scalar_t, typename mma_t>
__global__ void deform_conv2d_mma_weight_fragments_kernel(DeformConvGeometry g, const scalar_t* __restrict__ wmat,
                                                          scalar_t* __restrict__ buffer) {
#if defined(RCM_WMMA_AVAILABLE)
  constexpr int kVector = Vector16<scalar_t>::kSize;
  constexpr int kParts = MmaParts<mma_t>::kParts;
  const int64_t steps = mma_steps_per_point<scalar_t>(g);
  const int64_t cog = g.out_channels / g.groups;
  const int64_t cg = g.channels_per_group();
  const int64_t points = g.kernel_points();
  const int64_t column_tiles = mma_column_tiles<mma_t>(cog);
  repack_after_zero_pixel(g, mma_weight_fragment_elements<scalar_t, mma_t>(g) / kVector, buffer, [&](int64_t v) {
    const int lane = static_cast<int>(v % 32);
    const int part = static_cast<int>(v / 32 % kParts);
    const int64_t tile = v / (32 * kParts) % column_tiles;
    const int64_t step = v / (32 * kParts * column_tiles) % steps;
    const int64_t k = v / (32 * kParts * column_tiles * steps) % points;
    const int64_t group = v / (32 * kParts * column_tiles * steps * points);
    ReductionSteps<mma_step_depth<scalar_t>()> s(g, group, {static_cast<int>(k), static_cast<int>(k) + 1});
    for (int64_t i = 0; i < step; ++i) s.next();
    const int64_t co = 8 * tile + lane / 4;
    const int64_t c = s.c0 + lane % 4 * kVector;  // absolute channel
    const Vector16<uint32_t> zeros{};
    Vector16<scalar_t> x = load16<scalar_t>(&zeros);
    if (co < cog && c < s.c0 + s.depth) {
      const scalar_t* w = wmat + ((group * cog + co) * points + k) * cg + (c - group * cg);
      RCM_UNROLL
      for (int e = 0; e < kVector; ++e) x.v[e] = weight_part<mma_t>(w[e], part);
    }
    return x;
  });
#endif  // RCM_WMMA_AVAILABLE
}

// Grid: (gemm_grid_x<BM, BN>(g), splits, groups) with T = MmaTiles<kWarpCols, kWarpsAlongCols>;
// block: T::kThreads; dynamic shared memory: mma_shared_bytes<T, mma_t>().
// scalar_t and mma_t as for deform_conv2d_implicit_gemm_wmma_kernel (c10::Half with __half,
// c10::BFloat16 with __nv_bfloat16, float with Tf32), or float with Tf32Split, and so are the
// arguments, except that the weights come as fragments after the zero pixel, in `buffer`
// (deform_conv2d_mma_weight_fragments_kernel, with the same mma_t). The launcher guarantees input
// and buffer 16-byte aligned and mma_kernel_applies<scalar_t>(g).
template <typename scalar_t, typename mma_t, int kWarpCols, int kWarpsAlongCols>
__global__ void __launch_bounds__(MmaTiles<kWarpCols, kWarpsAlongCols>::kThreads,
                                  MmaTiles<kWarpCols, kWarpsAlongCols>::kBlocksPerSM)
    deform_conv2d_implicit_gemm_mma_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                                           const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                                           const scalar_t* __restrict__ mask, FieldStrides mask_strides,
                                           const scalar_t* __restrict__ buffer, const scalar_t* __restrict__ bias,
                                           scalar_t* __restrict__ out, float* __restrict__ partials) {
#if defined(RCM_WMMA_AVAILABLE)
  using T = MmaTiles<kWarpCols, kWarpsAlongCols>;
  using input_t = typename MmaParts<mma_t>::input_t;  // what the MMAs take
  using smem_t = typename MmaInput<input_t>::smem_t;
  using Steps = ReductionSteps<mma_step_depth<scalar_t>()>;
  static_assert(sizeof(smem_t) == sizeof(scalar_t), "weights are read as the MMA's words");
  constexpr int kVector = Vector16<scalar_t>::kSize;
  constexpr int kParts = MmaParts<mma_t>::kParts;

  using Shared = MmaShared<T, kParts>;
  static_assert(sizeof(Shared) <= kMmaMaxSharedBytes, "every sm_80+ device gives a block kMmaMaxSharedBytes");
  RCM_DYNAMIC_SHARED(Shared, shared);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int quad = lane / 4;  // q of mma_sync.cuh: the fragment row (of A and D) or column (of B)
  const int t = lane % 4;     // the thread's 16 bytes of a step's channels
  const int column_warp = warp % T::kWarpsAlongCols;  // which of its rows' warps along the columns
  // The warp's first row and output channel in the group, in the block's tile.
  auto warp_origin = [&](const GemmTile& tile) {
    return GemmTile{tile.row0 + (warp / T::kWarpsAlongCols) * T::kWarpRows, tile.co0 + column_warp * T::kWarpCols};
  };
  const GemmTile tile = gemm_tile<T::kRows, T::kCols>(g, blockIdx.x);
  const int64_t row0 = warp_origin(tile).row0;
  const int64_t rows = g.batch * g.out_pixels();
  const int64_t cog = g.out_channels / g.groups;
  // Every warp takes every step, even past the last row or output channel, where it samples and
  // multiplies zeros and stores nothing: the block copies its weights together and meets at a
  // barrier every step.
  const int64_t group = blockIdx.z;
  const uint32_t pixel_bytes = static_cast<uint32_t>(g.channels * sizeof(scalar_t));  // < 2^32: mma_kernel_applies
  RowCorners* corners = shared->corners[warp];

  float acc[T::kRowTiles][T::kColTiles][4];
  RCM_UNROLL
  for (int i = 0; i < T::kRowTiles; ++i) {
    RCM_UNROLL
    for (int j = 0; j < T::kColTiles; ++j) {
      RCM_UNROLL
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
    }
  }

  // Register row tile i (of fragments and accumulators) is the warp's row tile row_tile(i): the
  // ones it samples come first, so that indices into registers stay compile-time constants.
  auto row_tile = [column_warp](int i) { return (i + column_warp * T::kSampledRowTiles) % T::kRowTiles; };
  // Row h of register row tile i: row quad + 8 h of that tile, of the warp's 32.
  auto tile_row = [&](int i, int h) { return 16 * row_tile(i) + quad + 8 * h; };

  // The corner vectors of row r (of the warp's 32) for a step, at thread t's 16 bytes of its
  // channels, [c0 + t kVector, ...), to be blended into its A fragments after its share of MMAs.
  using CornerVectors = Vector16<scalar_t>[4];
  // Whether thread t's 16 bytes of a step's channels are within its depth (else it samples zeros).
  auto live_in = [t](const Steps& s) { return t * kVector < s.depth; };
  auto fetch_row = [&](const Steps& s, int r, CornerVectors& raw) {
    const uint32_t channel_bytes = static_cast<uint32_t>((s.c0 + t * kVector) * sizeof(scalar_t));
    fetch_corner_vectors(corners[r], channel_bytes, live_in(s), raw);
  };
  auto blend_row = [&](const Steps& s, const CornerVectors& raw, int r, uint32_t (&w)[kParts][4]) {
    blend_corner_vectors<mma_t>(load16<float>(corners[r].weight), raw, live_in(s), w);
  };
  // The block's weights of a step: its column tiles at b, 512 contiguous bytes a part (lane l's 16
  // at l), copied flat into stage `stage` by all its threads, 16 bytes at a time.
  constexpr int kTileStride = kParts * 32 * kVector;
  constexpr int kCopies = T::kCols / 8 * kParts * 32 / T::kThreads;  // per thread and step
  static_assert(kCopies * T::kThreads == T::kCols / 8 * kParts * 32, "the block's threads share its weight copies evenly");
  const int64_t column_tiles = mma_column_tiles<mma_t>(cog);
  const int64_t step_stride = column_tiles * kTileStride;
  auto copy_weights = [&](const scalar_t* b, int stage) {
    RCM_UNROLL
    for (int n = 0; n < kCopies; ++n) {
      const int chunk = threadIdx.x + n * T::kThreads;
      copy16_async(&shared->weights[stage][chunk / (32 * kParts)][chunk / 32 % kParts][chunk % 32], b + chunk * kVector,
                   true);
    }
    commit_async_copies();
  };
  // acc[.][j] += the step's A fragments x its weights (in stage `stage`), for the warp's column
  // tiles [j0, j1). With two parts, the small products first: they are the smaller terms.
  auto multiply = [&](int stage, const uint32_t (&a)[T::kRowTiles][kParts][2][4], int j0, int j1) {
    RCM_UNROLL
    for (int j = j0; j < j1; ++j) {
      Vector16<uint32_t> words[kParts];
      RCM_UNROLL
      for (int p = 0; p < kParts; ++p) words[p] = shared->weights[stage][column_warp * T::kColTiles + j][p][lane];
      RCM_UNROLL
      for (int m = 0; m < 2; ++m) {
        const uint32_t big[2] = {words[0].v[2 * m], words[0].v[2 * m + 1]};
        if constexpr (kParts == 2) {
          const uint32_t small[2] = {words[1].v[2 * m], words[1].v[2 * m + 1]};
          RCM_UNROLL
          for (int i = 0; i < T::kRowTiles; ++i) {
            mma_m16n8<input_t>(acc[i][j], a[i][1][m], big);
            mma_m16n8<input_t>(acc[i][j], a[i][0][m], small);
          }
        }
        RCM_UNROLL
        for (int i = 0; i < T::kRowTiles; ++i) mma_m16n8<input_t>(acc[i][j], a[i][0][m], big);
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
    // Every lane is done with the previous run's corners. gather's __syncthreads, which comes
    // between a run's last reads and the next start_run, already orders that: this is insurance,
    // not the barrier the kernel relies on (barrier audit: redundant).
    __syncwarp();
    corners[lane].set(row_live ? masked_corners_of<float>(g, px, s.k, field) : no_corners<float>(),
                      reinterpret_cast<const char*>(input), pixel_bytes, reinterpret_cast<const char*>(buffer));
    __syncwarp();
    const typename Steps::Run after = s.following_run();
    if (row_live && after.k < s.points) field = load_field(after.k, after.og);
  };
  // The words of a step's rows that this warp samples (w[i][h][p]: part p of row h of register row
  // tile i).
  using SampledWords = uint32_t[T::kSampledRowTiles][2][kParts][4];
  // A step's A fragments of all the warp's row tiles from the words it sampled: with a partner,
  // its own words are published first and the partner's read after the step's barrier, which also
  // makes the block's copies of the step's weights visible (every thread waits for its own first).
  // The words trade through the buffer numbered as the step's weight stage: consecutive steps
  // alternate, so a warp never overwrites words its partner may still be reading.
  auto gather = [&](const SampledWords& w, int stage, uint32_t (&a)[T::kRowTiles][kParts][2][4]) {
    if constexpr (T::kWarpsAlongCols > 1) {
      RCM_UNROLL
      for (int i = 0; i < T::kSampledRowTiles; ++i) {
        RCM_UNROLL
        for (int h = 0; h < 2; ++h) {
          RCM_UNROLL
          for (int p = 0; p < kParts; ++p) {
            const uint32_t(&x)[4] = w[i][h][p];
            shared->sampled[stage][warp][i][h][p][lane] = Vector16<uint32_t>{{x[0], x[1], x[2], x[3]}};
          }
        }
      }
    }
    wait_async_copies<0>();
    __syncthreads();
    RCM_UNROLL
    for (int i = 0; i < T::kSampledRowTiles; ++i) to_a_fragments(w[i], a[i]);
    if constexpr (T::kWarpsAlongCols > 1) {
      RCM_UNROLL
      for (int i = 0; i < T::kSampledRowTiles; ++i) {
        uint32_t theirs[2][kParts][4];
        RCM_UNROLL
        for (int h = 0; h < 2; ++h) {
          RCM_UNROLL
          for (int p = 0; p < kParts; ++p) {
            const Vector16<uint32_t> x = shared->sampled[stage][warp ^ 1][i][h][p][lane];
            RCM_UNROLL
            for (int e = 0; e < 4; ++e) theirs[h][p][e] = x.v[e];
          }
        }
        to_a_fragments(theirs, a[T::kSampledRowTiles + i]);
      }
    }
  };

  // A step's MMAs in one phase per sampled row of the next step (register row tile i, row h): the
  // phase's corner vectors are loaded before its share of the columns is multiplied and blended
  // after, one row at a time so that the registers hold them beside the accumulators.
  constexpr int kPhases = 2 * T::kSampledRowTiles;
  static_assert(T::kColTiles % kPhases == 0, "every phase multiplies the same number of column tiles");
  constexpr int kColsPerPhase = T::kColTiles / kPhases;
  Steps s(g, group, kernel_point_range(g, blockIdx.y, gridDim.y));
  if (!s.done()) {  // the same for the whole block, as every barrier below
    // The fragments walk the steps in the order the kernel takes them, one step_stride apart.
    const scalar_t* b = buffer + zero_pixel_elements<scalar_t>(g) +
                        ((group * g.kernel_points() + s.k) * mma_steps_per_point<scalar_t>(g) * column_tiles +
                         tile.co0 / 8) * kTileStride;
    int stage = 0;
    copy_weights(b, stage);
    uint32_t a[T::kRowTiles][kParts][2][4];
    if (row_live) field = load_field(s.k, s.og);
    start_run(s);
    {
      SampledWords w;
      RCM_UNROLL
      for (int p = 0; p < kPhases; ++p) {
        const int i = p / 2, h = p % 2;
        CornerVectors raw;
        fetch_row(s, tile_row(i, h), raw);
        blend_row(s, raw, tile_row(i, h), w[i][h]);
      }
      gather(w, stage, a);
    }
    for (;;) {
      Steps next = s;
      next.next();
      const bool more = !next.done();
      // Every warp is past the previous step's barrier, so done reading the stage these overwrite.
      if (more) {
        b += step_stride;
        copy_weights(b, stage ^ 1);
      }
      // The corners of the step that comes next are not read by this one's MMAs.
      if (more && next.first_of_run) start_run(next);
      SampledWords w;  // the next step's
      RCM_UNROLL
      for (int p = 0; p < kPhases; ++p) {
        const int i = p / 2, h = p % 2;
        CornerVectors raw;
        if (more) fetch_row(next, tile_row(i, h), raw);
        multiply(stage, a, p * kColsPerPhase, (p + 1) * kColsPerPhase);
        if (more) blend_row(next, raw, tile_row(i, h), w[i][h]);
      }
      if (!more) break;
      stage ^= 1;
      gather(w, stage, a);
      s = next;
    }
  }

  // D: rows quad and quad + 8 (h) of each row tile, output channels 2t and 2t + 1 of each column
  // tile.
  const GemmTile origin = warp_origin(gemm_tile_recomputed<T::kRows, T::kCols>(g));
  RCM_UNROLL
  for (int i = 0; i < T::kRowTiles; ++i) {
    RCM_UNROLL
    for (int j = 0; j < T::kColTiles; ++j) {
      const int64_t co = origin.co0 + 8 * j + 2 * t;
      if (co >= cog) continue;
      RCM_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int64_t row = origin.row0 + tile_row(i, h);
        if (row >= rows) continue;
        const float d[2] = {acc[i][j][2 * h], acc[i][j][2 * h + 1]};
        store_gemm_output_pair(g, rows, row, group, cog, co, d, bias, out, partials);
      }
    }
  }
#endif  // RCM_WMMA_AVAILABLE
}

}  // namespace kernels
}  // namespace rcm_fsad
