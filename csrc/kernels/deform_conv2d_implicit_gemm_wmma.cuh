// Implicit-GEMM forward of DCNv2 on tensor cores (WMMA), for float16 and bfloat16, and for float32
// when TF32 is allowed, where the mma.sync kernel does not apply (or implicit_gemm_wmma forces it).
// Same scheme as deform_conv2d_implicit_gemm.cuh (no columns buffer; the corners of each (row,
// kernel point, offset group) computed once and shared by its channels), with bigger tiles: the A
// tile is sampled in float, rounded once to the MMA input type and stored in shared memory; the
// weight tile is copied as is; each warp multiplies 32 rows x BN/2 columns of the block tile with
// 16x16 fragments and float accumulators. 16-byte loads of the NHWC input and the weight when
// channels and pointers allow (channels a multiple of 8 for 16-bit types, of 4 for float), element
// loads otherwise.
// Torch-free: launched by csrc/cuda/deform_conv2d_forward_cuda.cu and by the CPU emulation harness, which
// models the WMMA API (tests/kernels/cuda_emulation.h).
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

#include <type_traits>

#include "deform_conv2d_tile_corners.cuh"
#include "vector16.cuh"

namespace rcm_fsad {
namespace kernels {

// Selects TF32 tensor cores for float tensors (nvcuda::wmma::precision::tf32 is only declared
// for sm_80 and up, and the launcher names the kernel in every compilation pass).
struct Tf32 {};

// bf16 and tf32 tensor cores need sm_80; the kernel body is empty below that, and the launcher
// never launches it there.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define RCM_WMMA_AVAILABLE 1

// The MMA input type: the fragments' element type, what the shared-memory tiles hold, the
// fragment depth, and the rounding from float. Conversions go through the intrinsics: torch
// compiles device code without the implicit __half / __nv_bfloat16 conversions.
template <typename mma_t>
struct MmaInput;

template <>
struct MmaInput<__half> {
  using frag_t = __half;
  using smem_t = __half;
  static constexpr int kFragDepth = 16;
  __device__ __forceinline__ static smem_t from_float(float v) { return __float2half(v); }
};

template <>
struct MmaInput<__nv_bfloat16> {
  using frag_t = __nv_bfloat16;
  using smem_t = __nv_bfloat16;
  static constexpr int kFragDepth = 16;
  __device__ __forceinline__ static smem_t from_float(float v) { return __float2bfloat16(v); }
};

template <>
struct MmaInput<Tf32> {
  using frag_t = nvcuda::wmma::precision::tf32;
  using smem_t = float;
  static constexpr int kFragDepth = 8;
  __device__ __forceinline__ static smem_t from_float(float v) { return nvcuda::wmma::__float_to_tf32(v); }
};
#endif  // sm_80+

// kCols_ (BN, output channels per block) is 64 or 128: every block samples its rows' A tile for
// itself, so a block as wide as the conv group's output channels samples each element once.
// Either way 8 warps (4 x 2), each 32 rows x BN/2 columns of the tile, and two blocks per SM
// (kBlocksPerSM, a register budget of 128): while one block samples its next A tile, the other's
// warps keep the tensor cores busy, which one block of 16 warps, stalled at its barriers, did not.
// kDepth_ (BK): 32 channels per reduction step, or 16 (float tiles of the cp.async kernel).
template <int kCols_, int kDepth_ = 32>
struct WmmaTiles {
  static constexpr int kRows = 128;       // BM: output pixels per block
  static constexpr int kCols = kCols_;    // BN
  static constexpr int kDepth = kDepth_;  // BK: channels per reduction step
  static constexpr int kFrag = 16;      // fragment rows and columns
  static constexpr int kWarpsAlongRows = 4;
  static constexpr int kWarpsAlongCols = 2;
  static constexpr int kWarpRows = kRows / kWarpsAlongRows;  // a warp's share of the block tile
  static constexpr int kWarpCols = kCols / kWarpsAlongCols;
  static constexpr int kFragsAlongRows = kWarpRows / kFrag;
  static constexpr int kFragsAlongCols = kWarpCols / kFrag;
  static constexpr int kWarps = kWarpsAlongRows * kWarpsAlongCols;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlocksPerSM = 2;
  // Row pitch of the shared tiles of smem_t elements: kDepth plus 16 bytes. WMMA wants a multiple
  // of 16 bytes, and the extra 16 bytes put the 8 rows that a fragment load reads at once on
  // disjoint shared-memory banks (80-byte rows for 16-bit types, 144-byte rows for float).
  template <typename smem_t>
  static constexpr int kPitch = kDepth + 16 / static_cast<int>(sizeof(smem_t));
};

// The block width the launcher uses for a conv group of `cog` output channels. TF32 stays at 64:
// at 128 its fragments (twice the registers of 16-bit ones per element of depth) need more than
// the 128 registers of two blocks per SM, and ptxas spills.
template <typename mma_t>
RCM_HD int wmma_tile_cols(int64_t cog) {
  return cog > 64 && !std::is_same_v<mma_t, Tf32> ? 128 : 64;
}

// Shared memory of the kernel: the operand tiles of a reduction step, which the epilogue reuses to
// stage one accumulator fragment per warp.
template <typename smem_t, typename Tiles>
union WmmaShared {
  struct {
    smem_t a[Tiles::kRows * Tiles::template kPitch<smem_t>];  // [row][channel]
    smem_t b[Tiles::kCols * Tiles::template kPitch<smem_t>];  // [output channel][channel]
  } tiles;
  float staging[Tiles::kWarps][Tiles::kFrag * Tiles::kFrag];
};

// All the shared memory of the kernel below; WMMA needs 256-bit aligned tiles.
template <typename smem_t, typename Tiles>
struct WmmaKernelShared {
  alignas(32) WmmaShared<smem_t, Tiles> operands;
  TileCorners<float, Tiles::kRows> corners;  // of the current (k, offset group)
};

template <typename scalar_t, int kCols>
constexpr size_t wmma_shared_bytes() {
  return sizeof(WmmaKernelShared<scalar_t, WmmaTiles<kCols>>);
}

#if defined(RCM_WMMA_AVAILABLE)
// A warp's share of a block tile (Tiles::kWarpRows x Tiles::kWarpCols of the output, in 16 x 16
// fragments of float accumulators) and what the warp does with it: multiply the shared operand
// tiles of each reduction step into it, then write it out.
template <typename mma_t, typename Tiles>
struct WarpTileMma {
  using In = MmaInput<mma_t>;
  using smem_t = typename In::smem_t;
  static constexpr int kFragDepth = In::kFragDepth;
  static constexpr int kPitch = Tiles::template kPitch<smem_t>;
  using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, Tiles::kFrag, Tiles::kFrag, kFragDepth,
                                       typename In::frag_t, nvcuda::wmma::row_major>;
  // The weight tile is stored [output channel][reduction], i.e. B column-major.
  using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, Tiles::kFrag, Tiles::kFrag, kFragDepth,
                                       typename In::frag_t, nvcuda::wmma::col_major>;
  using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, Tiles::kFrag, Tiles::kFrag, kFragDepth, float>;

  int row0;  // the warp's first row and column within the block tile
  int col0;
  FragC acc[Tiles::kFragsAlongRows][Tiles::kFragsAlongCols];

  __device__ __forceinline__ explicit WarpTileMma(int warp)
      : row0((warp / Tiles::kWarpsAlongCols) * Tiles::kWarpRows),
        col0((warp % Tiles::kWarpsAlongCols) * Tiles::kWarpCols) {
    RCM_UNROLL
    for (int i = 0; i < Tiles::kFragsAlongRows; ++i) {
      RCM_UNROLL
      for (int j = 0; j < Tiles::kFragsAlongCols; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
    }
  }

  // acc += a_tile[the warp's rows][0, depth) x b_tile[the warp's columns][0, depth)^T. Both tiles
  // are [row or output channel][channel] with row pitch kPitch and zeros from depth up to the
  // next multiple of kFragDepth.
  __device__ __forceinline__ void multiply(const smem_t* a_tile, const smem_t* b_tile, int depth) {
    for (int kk = 0; kk < depth; kk += kFragDepth) {
      FragA a[Tiles::kFragsAlongRows];
      RCM_UNROLL
      for (int i = 0; i < Tiles::kFragsAlongRows; ++i) {
        nvcuda::wmma::load_matrix_sync(a[i], a_tile + (row0 + i * Tiles::kFrag) * kPitch + kk, kPitch);
      }
      // One B fragment live at a time: with 64 columns per warp, holding all four took the TF32
      // instantiation past its 128 registers.
      RCM_UNROLL
      for (int j = 0; j < Tiles::kFragsAlongCols; ++j) {
        FragB b;
        nvcuda::wmma::load_matrix_sync(b, b_tile + (col0 + j * Tiles::kFrag) * kPitch + kk, kPitch);
        RCM_UNROLL
        for (int i = 0; i < Tiles::kFragsAlongRows; ++i) nvcuda::wmma::mma_sync(acc[i][j], a[i], b, acc[i][j]);
      }
    }
  }

  // Writes the warp's sums out with store_gemm_output (bias, rounding, bounds), through `stage`:
  // 16 x 16 floats of shared memory that no other warp uses. The block tile starts at row
  // block_row0 and output channel co0 of conv group `group`.
  template <typename scalar_t>
  __device__ __forceinline__ void store(float* stage, int lane, const DeformConvGeometry& g, int64_t block_row0,
                                        int64_t co0, int64_t group, const scalar_t* bias, scalar_t* out,
                                        float* partials) const {
    const int64_t rows = g.batch * g.out_pixels();
    const int64_t cog = g.out_channels / g.groups;
    RCM_UNROLL
    for (int i = 0; i < Tiles::kFragsAlongRows; ++i) {
      RCM_UNROLL
      for (int j = 0; j < Tiles::kFragsAlongCols; ++j) {
        nvcuda::wmma::store_matrix_sync(stage, acc[i][j], Tiles::kFrag, nvcuda::wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < Tiles::kFrag * Tiles::kFrag; e += 32) {
          const int64_t row = block_row0 + row0 + i * Tiles::kFrag + e / Tiles::kFrag;
          const int64_t co = co0 + col0 + j * Tiles::kFrag + e % Tiles::kFrag;
          if (row < rows && co < cog) store_gemm_output(g, rows, row, group * cog + co, stage[e], bias, out, partials);
        }
        __syncwarp();  // the staging tile is read before the next fragment overwrites it
      }
    }
  }
};
#endif  // RCM_WMMA_AVAILABLE

// Grid: (gemm_grid_x<BM, BN>(g), splits, groups); block: WmmaTiles<kCols>::kThreads; dynamic
// shared memory: wmma_shared_bytes<scalar_t, kCols>().
// scalar_t: the tensors' element type (c10::Half, c10::BFloat16 or float from the launcher; any
// 16-bit or 32-bit type with a conversion to float); mma_t: __half, __nv_bfloat16 or
// Tf32, of the same size as scalar_t (the weight tile is a bit copy).
// input: NHWC (N, H, W, C); wmat: (C_out, kh*kw*C/groups) as made by weight_matrix();
// bias: (C_out) or null; out: (rows, C_out), rows = N*H_out*W_out in NHWC order.
// Split (splits > 1): partials (splits, rows, C_out) receive the float sums without bias, out is
// not written (deform_conv2d_split_sum_kernel finishes); partials is null otherwise.
template <typename scalar_t, typename mma_t, int kCols>
__global__ void __launch_bounds__(WmmaTiles<kCols>::kThreads, WmmaTiles<kCols>::kBlocksPerSM)
    deform_conv2d_implicit_gemm_wmma_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                                            const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                                            const scalar_t* __restrict__ mask, FieldStrides mask_strides,
                                            const scalar_t* __restrict__ wmat, const scalar_t* __restrict__ bias,
                                            scalar_t* __restrict__ out, float* __restrict__ partials) {
#if defined(RCM_WMMA_AVAILABLE)
  using T = WmmaTiles<kCols>;
  using Mma = WarpTileMma<mma_t, T>;
  using In = typename Mma::In;
  using smem_t = typename In::smem_t;
  static_assert(sizeof(smem_t) == sizeof(scalar_t), "the weight tile is copied bit for bit");
  constexpr int kVector = Vector16<scalar_t>::kSize;
  constexpr int kPitch = Mma::kPitch;

  using Shared = WmmaKernelShared<smem_t, T>;
  static_assert(sizeof(Shared) == wmma_shared_bytes<scalar_t, kCols>(), "the launcher allocates wmma_shared_bytes");
  RCM_DYNAMIC_SHARED(Shared, shared);
  auto& corners = shared->corners;
  smem_t* const a_tile = shared->operands.tiles.a;
  smem_t* const b_tile = shared->operands.tiles.b;

  const int tid = threadIdx.x;
  const GemmTile tile = gemm_tile<T::kRows, T::kCols>(g, blockIdx.x);
  const int64_t row0 = tile.row0;
  const int64_t co0 = tile.co0;
  const int64_t group = blockIdx.z;
  const int64_t cg = g.channels_per_group();
  const int64_t cog = g.out_channels / g.groups;
  const int64_t reduction = g.kernel_points() * cg;
  // Vector loads need every run of channels to start on a 16-byte boundary: a step starts at the
  // start of a run, and a weight row's runs start where its offset groups do, so whole vectors per
  // conv group are not enough for the weights either.
  const bool input_vectors = aligned16(input) && g.channel_runs_are_multiples_of(kVector);
  const bool weight_vectors = aligned16(wmat) && g.channel_runs_are_multiples_of(kVector);

  Mma mma(tid / 32);

  for (ReductionSteps<T::kDepth> step(g, group, kernel_point_range(g, blockIdx.y, gridDim.y)); !step.done();
       step.next()) {
    const int64_t k = step.k, c0 = step.c0;
    const int depth = step.depth;
    // Safe without a barrier: corners were last read before the previous step's second barrier.
    if (step.first_of_run && tid < T::kRows) {
      set_tile_corners(corners, tid, g, row0, k, step.og, offset, offset_strides, mask, mask_strides);
    }
    __syncthreads();  // corners written; the previous step's fragments loaded
    // A: kVector consecutive channels of one row per item; consecutive threads take
    // consecutive channel runs of a row, so the corner reads coalesce.
    constexpr int kVectorsPerRow = T::kDepth / kVector;
    for (int e = tid; e < T::kRows * kVectorsPerRow; e += T::kThreads) {
      const int r = e / kVectorsPerRow;
      const int ch0 = (e % kVectorsPerRow) * kVector;
      float v[kVector];
      RCM_UNROLL
      for (int j = 0; j < kVector; ++j) v[j] = 0.0f;
      if (input_vectors && ch0 + kVector <= depth) {
        RCM_UNROLL
        for (int i = 0; i < 4; ++i) {
          const int64_t pixel = corners.pixel[i][r];
          if (pixel < 0) continue;
          add_weighted<std::is_same_v<mma_t, __nv_bfloat16>>(v, corners.weight[i][r], load16<scalar_t>(input + pixel * g.channels + c0 + ch0));
        }
      } else {
        RCM_UNROLL
        for (int j = 0; j < kVector; ++j) {
          if (ch0 + j < depth) v[j] = sample_tile_row(corners, r, input, g.channels, c0 + ch0 + j);
        }
      }
      Vector16<smem_t> rounded;
      RCM_UNROLL
      for (int j = 0; j < kVector; ++j) rounded.v[j] = In::from_float(v[j]);
      store16(a_tile + r * kPitch + ch0, rounded);
    }
    // B: the weight rows of this block's output channels, kVector reduction entries per item.
    const int64_t w_col0 = k * cg + (c0 - group * cg);
    for (int e = tid; e < T::kCols * kVectorsPerRow; e += T::kThreads) {
      const int n = e / kVectorsPerRow;
      const int ch0 = (e % kVectorsPerRow) * kVector;
      const int64_t co = co0 + n;
      const scalar_t* w = wmat + (group * cog + co) * reduction + w_col0 + ch0;
      Vector16<smem_t> x;
      if (co < cog && weight_vectors && ch0 + kVector <= depth) {
        x = load16<smem_t>(w);
        // TF32 operands must be rounded; 16-bit weights already are what the MMA reads.
        if constexpr (sizeof(smem_t) == sizeof(float)) {
          RCM_UNROLL
          for (int j = 0; j < kVector; ++j) x.v[j] = In::from_float(x.v[j]);
        }
      } else {
        RCM_UNROLL
        for (int j = 0; j < kVector; ++j) {
          x.v[j] = In::from_float(co < cog && ch0 + j < depth ? static_cast<float>(w[j]) : 0.0f);
        }
      }
      store16(b_tile + n * kPitch + ch0, x);
    }
    __syncthreads();  // tiles complete
    mma.multiply(a_tile, b_tile, depth);
  }

  __syncthreads();  // the staging tiles overlay the operand tiles, which other warps may still read
  mma.store(shared->operands.staging[tid / 32], tid % 32, g, row0, co0, group, bias, out, partials);
#endif  // RCM_WMMA_AVAILABLE
}

}  // namespace kernels
}  // namespace rcm_fsad
