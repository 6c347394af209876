// The CUDA launcher of deform_conv2d, its forward (the backward's is deform_conv2d_backward_cuda.cu), by
// RCM_FSAD_DEFORM_CONV_ALGO:
//   implicit_gemm (default)  no columns buffer: on sm_80+ a tensor-core kernel for float16 and
//                            bfloat16, and for float32 when TF32 matmuls are allowed
//                            (torch.backends.cuda.matmul.allow_tf32, as for torchvision's GEMM).
//                            For float32 without TF32, the mma.sync kernel below on operands split
//                            in two TF32 parts (kernels::Tf32Split, "3xTF32": float32's accuracy
//                            at three MMAs a product) where it applies, the CUDA-core kernel
//                            elsewhere. The tensor-core kernels:
//                            deform_conv2d_implicit_gemm_mma_kernel (mma.sync, the sampled operand
//                            in registers, each element sampled once, on weights repacked by
//                            deform_conv2d_mma_weight_fragments_kernel) where every run of channels
//                            is whole 16-byte vectors and kernels::mma_kernel_applies (its shared
//                            memory fits every sm_80+ device); else, where the runs are whole
//                            vectors, deform_conv2d_implicit_gemm_wmma_async_kernel (WMMA, loads in
//                            flight with cp.async) where it fits the device; else
//                            deform_conv2d_implicit_gemm_wmma_kernel. Without tensor cores the
//                            CUDA-core kernel (deform_conv2d_implicit_gemm_kernel, filling its tiles
//                            16 bytes at a time where vector_loads_apply). Any of them split over
//                            kernel points when its tiles would not fill one wave (launch_implicit_gemm);
//   implicit_gemm_wgmma      float16, bfloat16 and float32 (TF32 where allowed, else split TF32) on
//                            an sm_90 device with the build's sm_90a code, where the mma.sync kernel
//                            applies: deform_conv2d_implicit_gemm_wgmma_kernel (Hopper's
//                            asynchronous warpgroup MMA, B from shared memory). Opt-in
//                            and not among autotune's candidates until a GPU run has checked and
//                            timed it (benchmarks/NOTES.md); elsewhere the default path;
//   implicit_gemm_wmma       the same as the default, but never the mma.sync kernel (the default
//                            until an H200 run timed the two: benchmarks/NOTES.md), so float32
//                            without TF32 takes the CUDA-core kernel, as it does under
//                            implicit_gemm_sync;
//   implicit_gemm_sync       the same, but only the WMMA kernel with synchronous loads (to measure
//                            what cp.async gains);
//   implicit_gemm_simt       the CUDA-core implicit GEMM for every dtype;
//   columns                  the direct path: chunks of output pixels are sampled into a columns
//                            buffer by deform_im2col_kernel and multiplied by the weight with cuBLAS.
//   autotune                 the fastest of the paths above that differ for the problem, timed on
//                            its first call and remembered per problem (autotuned_algorithm), as
//                            torch.backends.cudnn.benchmark does for convolutions.
// Kernel bodies live in ../kernels/.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "../deform_conv2d_args.h"
#include "../kernels/deform_conv2d_implicit_gemm.cuh"
#include "../kernels/deform_conv2d_implicit_gemm_mma.cuh"
#include "../kernels/deform_conv2d_implicit_gemm_wgmma.cuh"
#include "../kernels/deform_conv2d_implicit_gemm_wmma.cuh"
#include "../kernels/deform_conv2d_implicit_gemm_wmma_async.cuh"
#include "../kernels/deform_conv2d_kernels.cuh"
#include "../torch_compat.h"
#include "device_queries.h"
#include "launch_common.h"
#include "layout_cuda.h"
#include "stream_timer.h"
#include "wgmma_runs.h"

namespace rcm_fsad {
namespace {

using kernels::DeformConvGeometry;
using kernels::FieldStrides;

// The largest y and z extents of a grid.
constexpr int64_t kMaxGridYZ = 65535;

enum class ForwardAlgorithm {
  ImplicitGemm,
  ImplicitGemmWgmma,
  ImplicitGemmWmma,
  ImplicitGemmSync,
  ImplicitGemmSimt,
  Columns,
  Autotune
};

ForwardAlgorithm forward_algorithm() {
  const char* algo = std::getenv("RCM_FSAD_DEFORM_CONV_ALGO");
  if (algo == nullptr || std::strcmp(algo, "implicit_gemm") == 0) return ForwardAlgorithm::ImplicitGemm;
  if (std::strcmp(algo, "implicit_gemm_wgmma") == 0) return ForwardAlgorithm::ImplicitGemmWgmma;
  if (std::strcmp(algo, "implicit_gemm_wmma") == 0) return ForwardAlgorithm::ImplicitGemmWmma;
  if (std::strcmp(algo, "implicit_gemm_sync") == 0) return ForwardAlgorithm::ImplicitGemmSync;
  if (std::strcmp(algo, "implicit_gemm_simt") == 0) return ForwardAlgorithm::ImplicitGemmSimt;
  if (std::strcmp(algo, "autotune") == 0) return ForwardAlgorithm::Autotune;
  TORCH_CHECK(std::strcmp(algo, "columns") == 0,
              "RCM_FSAD_DEFORM_CONV_ALGO must be 'implicit_gemm', 'implicit_gemm_wgmma', 'implicit_gemm_wmma', "
              "'implicit_gemm_sync', 'implicit_gemm_simt', 'columns' or 'autotune', got '", algo, "'");
  return ForwardAlgorithm::Columns;
}

// The tensor-core input type for a tensor dtype (void: none).
template <typename scalar_t>
struct TensorCoreInput {
  using type = void;
};
template <>
struct TensorCoreInput<at::Half> {
  using type = __half;
};
template <>
struct TensorCoreInput<at::BFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct TensorCoreInput<float> {
  using type = kernels::Tf32;
};

// Whether float32 matmuls may use TF32, as torch's own cuBLAS calls decide (torchvision's GEMM among
// them): the precision of CUDA matmuls, unless a NoTF32Guard is active.
bool tf32_matmuls_allowed() {
  return !at::NoTF32Guard::should_disable_tf32() && cuda_matmul_tf32_allowed();
}

// Whether the code the current device runs for the tensor-core kernels was compiled for sm_80 or later.
// Their bodies are empty for older targets (__CUDA_ARCH__ < 800), and a build whose newest code for
// the device is older PTX (TORCH_CUDA_ARCH_LIST="7.5+PTX" on an sm_80+ GPU, which then compiles that
// PTX) would launch them and return garbage. One kernel answers for all: the same architectures
// build every kernel of the extension.
bool tensor_core_code_loaded() {
  static QueryCache<c10::DeviceIndex, bool> cache;
  return cache.get(c10::cuda::current_device(), [] {
    cudaFuncAttributes attributes{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes,
                                         kernels::deform_conv2d_implicit_gemm_wmma_kernel<at::Half, __half, 64>));
    return attributes.ptxVersion >= 80;
  });
}

// Whether the input's device runs the tensor-core kernels: sm_80+ with code built for it.
bool tensor_cores_present(const at::Tensor& input) {
  return at::cuda::getDeviceProperties(input.get_device())->major >= 8 && tensor_core_code_loaded();
}

// For a dtype with a tensor-core input type: tensor cores present, and for float32 only where TF32 is
// allowed (without TF32 see use_split_tf32).
template <typename scalar_t>
bool use_tensor_cores(const at::Tensor& input) {
  if (std::is_same_v<scalar_t, float> && !tf32_matmuls_allowed()) return false;
  return tensor_cores_present(input);
}

// An implicit-GEMM forward kernel over its tile grid; when the tiles would not fill the GPU for one
// wave, also split over kernel points (kernels::forward_splits), into acc_t partial sums that
// deform_conv2d_split_sum_kernel adds up in a fixed order (the forward stays deterministic).
// shared_bytes: the kernel's dynamic shared memory.
template <typename Tiles, typename acc_t, typename scalar_t, typename Kernel>
void launch_implicit_gemm(Kernel kernel, const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a,
                          const at::Tensor& wmat, const std::optional<at::Tensor>& bias, at::Tensor& out_rows,
                          size_t shared_bytes) {
  const int64_t blocks = kernels::gemm_grid_x<Tiles::kRows, Tiles::kCols>(g);
  // The kernels count channels in 32 bits (kernels::ReductionSteps).
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max() && g.groups <= kMaxGridYZ &&
                  g.channels <= kernels::kMaxReductionChannels,
              "deform_conv2d: problem too large for the implicit-GEMM grid; set "
              "RCM_FSAD_DEFORM_CONV_ALGO=columns");
  const int64_t splits =
      kernels::forward_splits(blocks * g.groups, at::cuda::getCurrentDeviceProperties()->multiProcessorCount,
                              resident_blocks_per_sm(kernel, Tiles::kThreads, shared_bytes), g.kernel_points(),
                              kMaxGridYZ);
  at::Tensor partials;
  if (splits > 1) {
    partials = at::empty({splits, out_rows.size(0), g.out_channels},
                         out_rows.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  }
  const scalar_t* bias_ptr = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(splits), static_cast<unsigned>(g.groups));
  kernel<<<grid, Tiles::kThreads, shared_bytes, stream>>>(g, a.input, a.offset, a.offset_strides, a.mask, a.mask_strides,
                                               wmat.const_data_ptr<scalar_t>(), bias_ptr,
                                               out_rows.mutable_data_ptr<scalar_t>(),
                                               splits > 1 ? partials.mutable_data_ptr<acc_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (splits > 1) {
    const int64_t elements = out_rows.numel();
    kernels::deform_conv2d_split_sum_kernel<scalar_t, acc_t><<<blocks_for(elements, kThreads), kThreads, 0, stream>>>(
        elements, g.out_channels, static_cast<int>(splits), partials.const_data_ptr<acc_t>(), bias_ptr,
        out_rows.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// What the 16-byte copies and loads of deform_conv2d_implicit_gemm_wmma_async_kernel,
// deform_conv2d_implicit_gemm_mma_kernel and the vector fills of deform_conv2d_implicit_gemm_kernel
// need: every run of channels whole vectors, from 16-byte aligned bases.
template <typename scalar_t>
bool vector_loads_apply(const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a, const at::Tensor& wmat) {
  return g.channel_runs_are_multiples_of(kernels::Vector16<scalar_t>::kSize) && kernels::aligned16(a.input) &&
         kernels::aligned16(wmat.const_data_ptr());
}

// Whether the default forward of float32 with TF32 off takes the mma.sync kernel on operands split in
// two TF32 parts (kernels::Tf32Split): float32's accuracy from three TF32 MMAs per product, where
// that kernel applies. Elsewhere it takes the CUDA-core kernel, as every forced implicit-GEMM path
// does without TF32.
template <typename scalar_t>
bool use_split_tf32(const at::Tensor& input, const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a,
                    const at::Tensor& wmat) {
  return std::is_same_v<scalar_t, float> && !tf32_matmuls_allowed() && vector_loads_apply(g, a, wmat) &&
         kernels::mma_kernel_applies<scalar_t>(g) && tensor_cores_present(input);
}

// Whether RCM_FSAD_DEFORM_CONV_ALGO=implicit_gemm_wgmma takes the wgmma kernel for a type with tensor
// cores (float32: TF32 where allowed, else split TF32): where the mma.sync kernel applies, on a device
// that runs its sm_90a code (52 KB of shared memory at most). Elsewhere it is the default path.
template <typename scalar_t>
bool wgmma_applies(const at::Tensor& input, const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a,
                   const at::Tensor& wmat) {
  return vector_loads_apply(g, a, wmat) && kernels::mma_kernel_applies<scalar_t>(g) && tensor_cores_present(input) &&
         wgmma_kernel_runs();
}

// Whether the current device gives a block of the cp.async tensor-core kernel kCols wide its shared
// memory: 102 KB 64 wide, 112 KB 128 wide. sm_80 and sm_90 give 163 and 227 KB, while sm_86, sm_89
// and sm_120 give 99 KB and so always take the kernel with synchronous loads.
template <typename scalar_t, int kCols>
bool async_kernel_fits() {
  return kernels::wmma_async_shared_bytes<scalar_t, kCols>() <=
         at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
}

// The same at the block width the forward takes for g.
template <typename mma_t, typename scalar_t>
bool async_kernel_fits_for(const DeformConvGeometry& g) {
  return kernels::wmma_tile_cols<mma_t>(g.out_channels / g.groups) == 128 ? async_kernel_fits<scalar_t, 128>()
                                                                           : async_kernel_fits<scalar_t, 64>();
}

// The tensor-core forward with blocks kCols wide: the cp.async kernel when `async` (where
// vector_loads_apply) and it fits the device, the one with synchronous loads otherwise.
template <int kCols, typename mma_t, typename scalar_t>
void launch_tensor_core_forward(bool async, const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a,
                                const at::Tensor& wmat, const std::optional<at::Tensor>& bias, at::Tensor& out_rows) {
  if (async && async_kernel_fits<scalar_t, kCols>()) {
    launch_implicit_gemm<kernels::WmmaAsyncTiles<scalar_t, kCols>, float>(
        kernels::deform_conv2d_implicit_gemm_wmma_async_kernel<scalar_t, mma_t, kCols>, g, a, wmat, bias, out_rows,
        kernels::wmma_async_shared_bytes<scalar_t, kCols>());
  } else {
    launch_implicit_gemm<kernels::WmmaTiles<kCols>, float>(
        kernels::deform_conv2d_implicit_gemm_wmma_kernel<scalar_t, mma_t, kCols>, g, a, wmat, bias, out_rows,
        kernels::wmma_shared_bytes<scalar_t, kCols>());
  }
}

// The weights repacked for a tensor-core kernel: `elements` of them, written by `repack` (a grid-stride
// kernel of one 16-byte vector a thread, taking g and wmat).
template <typename scalar_t, typename Repack>
at::Tensor repacked_weights(Repack repack, const DeformConvGeometry& g, const at::Tensor& wmat, int64_t elements) {
  at::Tensor out = at::empty({elements}, wmat.options());
  const int64_t vectors = elements / kernels::Vector16<scalar_t>::kSize;
  repack<<<blocks_for(vectors, kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      g, wmat.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// The mma.sync forward, its warps laid out as kernels::with_mma_tiles picks, on the weights repacked
// as its lanes read them (kernels::mma_weight_fragment_elements), after the pixel of zeros its
// corners outside the image read (kernels::zero_pixel_elements). mma_t: the tensor-core input type,
// or kernels::Tf32Split for float32 at float32's accuracy. Its shared memory fits every sm_80+
// device (kernels::kMmaMaxSharedBytes).
template <typename mma_t, typename scalar_t>
void launch_mma_forward(const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a, const at::Tensor& wmat,
                        const std::optional<at::Tensor>& bias, at::Tensor& out_rows) {
  const at::Tensor fragments =
      repacked_weights<scalar_t>(kernels::deform_conv2d_mma_weight_fragments_kernel<scalar_t, mma_t>, g, wmat,
                                 kernels::mma_weight_buffer_elements<scalar_t, mma_t>(g));
  kernels::with_mma_tiles<mma_t>(g.out_channels / g.groups, [&](auto tiles) {
    using Tiles = decltype(tiles);
    launch_implicit_gemm<Tiles, float>(
        kernels::deform_conv2d_implicit_gemm_mma_kernel<scalar_t, mma_t, Tiles::kWarpCols, Tiles::kWarpsAlongCols>,
        g, a, fragments, bias, out_rows, kernels::mma_shared_bytes<Tiles, mma_t>());
  });
}

// The wgmma forward (where wgmma_applies), its block as wide as kernels::wgmma_tile_cols picks, on the
// weights repacked as the image of a block's step in shared memory, after the zero pixel. mma_t: the
// tensor-core input type, or kernels::Tf32Split for float32 at float32's accuracy.
template <typename mma_t, typename scalar_t>
void launch_wgmma_forward(const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a, const at::Tensor& wmat,
                          const std::optional<at::Tensor>& bias, at::Tensor& out_rows) {
  const at::Tensor tiles =
      repacked_weights<scalar_t>(kernels::deform_conv2d_wgmma_weight_tiles_kernel<scalar_t, mma_t>, g, wmat,
                                 kernels::wgmma_weight_buffer_elements<scalar_t, mma_t>(g));
  kernels::with_wgmma_tiles<mma_t>(g.out_channels / g.groups, [&](auto tiles_type) {
    using Tiles = decltype(tiles_type);
    launch_implicit_gemm<Tiles, float>(kernels::deform_conv2d_implicit_gemm_wgmma_kernel<scalar_t, mma_t, Tiles::kCols>,
                                       g, a, tiles, bias, out_rows, kernels::wgmma_shared_bytes<Tiles::kCols, mma_t>());
  });
}

template <typename scalar_t>
void implicit_gemm_forward(ForwardAlgorithm algo, const at::Tensor& input, const DeformConvGeometry& g,
                           const ChunkArgs<scalar_t>& a, const at::Tensor& wmat,
                           const std::optional<at::Tensor>& bias, at::Tensor& out_rows) {
  const std::optional<at::Tensor> bias_c =
      bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  if (algo == ForwardAlgorithm::ImplicitGemmWgmma) {
    if constexpr (!std::is_void_v<typename TensorCoreInput<scalar_t>::type>) {
      if (wgmma_applies<scalar_t>(input, g, a, wmat)) {
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (!tf32_matmuls_allowed()) {
            launch_wgmma_forward<kernels::Tf32Split>(g, a, wmat, bias_c, out_rows);
            return;
          }
        }
        launch_wgmma_forward<typename TensorCoreInput<scalar_t>::type>(g, a, wmat, bias_c, out_rows);
        return;
      }
    }
    algo = ForwardAlgorithm::ImplicitGemm;
  }
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (algo == ForwardAlgorithm::ImplicitGemm && use_split_tf32<scalar_t>(input, g, a, wmat)) {
      launch_mma_forward<kernels::Tf32Split>(g, a, wmat, bias_c, out_rows);
      return;
    }
  }
  if constexpr (!std::is_void_v<typename TensorCoreInput<scalar_t>::type>) {
    if (algo != ForwardAlgorithm::ImplicitGemmSimt && use_tensor_cores<scalar_t>(input)) {
      using mma_t = typename TensorCoreInput<scalar_t>::type;
      const bool vectors = vector_loads_apply(g, a, wmat);
      if (algo == ForwardAlgorithm::ImplicitGemm && vectors && kernels::mma_kernel_applies<scalar_t>(g)) {
        launch_mma_forward<mma_t>(g, a, wmat, bias_c, out_rows);
        return;
      }
      // Where the mma.sync kernel does not apply, the default is implicit_gemm_wmma's choice.
      const bool async = algo != ForwardAlgorithm::ImplicitGemmSync && vectors;
      if (kernels::wmma_tile_cols<mma_t>(g.out_channels / g.groups) == 128) {
        launch_tensor_core_forward<128, mma_t>(async, g, a, wmat, bias_c, out_rows);
      } else {
        launch_tensor_core_forward<64, mma_t>(async, g, a, wmat, bias_c, out_rows);
      }
      return;
    }
  }
  using acc_t = at::opmath_type<scalar_t>;
  using Tiles = kernels::ImplicitGemmTiles<acc_t>;
  if (vector_loads_apply(g, a, wmat)) {
    launch_implicit_gemm<Tiles, acc_t>(kernels::deform_conv2d_implicit_gemm_kernel<scalar_t, acc_t, true>, g, a,
                                       wmat, bias_c, out_rows, kernels::implicit_gemm_shared_bytes<acc_t>());
  } else {
    launch_implicit_gemm<Tiles, acc_t>(kernels::deform_conv2d_implicit_gemm_kernel<scalar_t, acc_t, false>, g, a,
                                       wmat, bias_c, out_rows, kernels::implicit_gemm_shared_bytes<acc_t>());
  }
}

template <typename scalar_t>
void launch_im2col(const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a, int64_t first_row,
                   int64_t rows, scalar_t* columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lanes = kernels::lanes_per_sample<scalar_t>(g, kernels::im2col_vectors(g, a.input, columns));
  launch_sampling(g, rows, lanes, [&](auto index, auto lanes_type, int blocks) {
    using index_t = decltype(index);
    kernels::deform_im2col_kernel<scalar_t, acc_t, index_t, decltype(lanes_type)::value>
        <<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            g, a.input, a.offset, a.offset_strides, a.mask, a.mask_strides, first_row, static_cast<index_t>(rows),
            columns);
  });
}

// The columns forward: chunks of rows sampled into columns by deform_im2col_kernel, each chunk times
// the weight with cuBLAS.
template <typename scalar_t>
void columns_forward(const at::Tensor& input, const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a,
                     const at::Tensor& wmat, const std::optional<at::Tensor>& bias, at::Tensor& out_rows) {
  const int64_t rows = out_rows.size(0);
  const int64_t chunk = chunk_rows(g);
  at::Tensor cols = at::empty({chunk, g.column_width()}, input.options());
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t len = std::min(chunk, rows - r0);
    launch_im2col<scalar_t>(g, a, r0, len, cols.mutable_data_ptr<scalar_t>());
    at::Tensor out_chunk = out_rows.narrow(0, r0, len);
    columns_times_weight(cols.narrow(0, 0, len), wmat, bias, out_chunk, g);
  }
}

// The forward by one path (any but Autotune) into out_rows.
template <typename scalar_t>
void forward_by(ForwardAlgorithm algo, const at::Tensor& input, const DeformConvGeometry& g,
                const ChunkArgs<scalar_t>& a, const at::Tensor& wmat, const std::optional<at::Tensor>& bias,
                at::Tensor& out_rows) {
  if (algo == ForwardAlgorithm::Columns) {
    columns_forward<scalar_t>(input, g, a, wmat, bias, out_rows);
  } else {
    implicit_gemm_forward<scalar_t>(algo, input, g, a, wmat, bias, out_rows);
  }
}

// The forward paths that run different kernels for this problem, the default first (not the wgmma
// kernel, until a GPU run has checked it). Where the default takes a tensor-core kernel: the
// CUDA-core kernel, and where the 16-byte loads apply, also the WMMA
// kernels that differ from the default's: the cp.async one where the default's is the mma.sync kernel
// and the cp.async one fits the device, the synchronous-load one where the default's is either of the
// others. Elsewhere these paths run the default's own kernel. In float32 without TF32 only the
// CUDA-core kernel differs, where the default splits its operands. The columns path always.
template <typename scalar_t>
std::vector<ForwardAlgorithm> forward_candidates(const at::Tensor& input, const DeformConvGeometry& g,
                                                 const ChunkArgs<scalar_t>& a, const at::Tensor& wmat) {
  std::vector<ForwardAlgorithm> candidates{ForwardAlgorithm::ImplicitGemm};
  if constexpr (!std::is_void_v<typename TensorCoreInput<scalar_t>::type>) {
    if (use_tensor_cores<scalar_t>(input)) {
      using mma_t = typename TensorCoreInput<scalar_t>::type;
      if (vector_loads_apply(g, a, wmat)) {
        const bool mma = kernels::mma_kernel_applies<scalar_t>(g);
        const bool async = async_kernel_fits_for<mma_t, scalar_t>(g);
        if (mma && async) candidates.push_back(ForwardAlgorithm::ImplicitGemmWmma);
        if (mma || async) candidates.push_back(ForwardAlgorithm::ImplicitGemmSync);
      }
      candidates.push_back(ForwardAlgorithm::ImplicitGemmSimt);
    }
  }
  if (use_split_tf32<scalar_t>(input, g, a, wmat)) candidates.push_back(ForwardAlgorithm::ImplicitGemmSimt);
  candidates.push_back(ForwardAlgorithm::Columns);
  return candidates;
}

// What the fastest path depends on: the device, the dtype, TF32 (float32 only) and cuBLAS's reduced-precision
// reductions (16-bit types: the columns path's GEMM), the geometry, the offset's and mask's layouts, a mask, a
// bias, and whether the 16-byte loads apply (alignment).
template <typename scalar_t>
std::vector<int64_t> problem_key(const at::Tensor& input, const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a,
                                 const at::Tensor& wmat, const std::optional<at::Tensor>& bias) {
  const at::Context& context = at::globalContext();
  int64_t gemm_setting = 0;
  if constexpr (std::is_same_v<scalar_t, float>) gemm_setting = tf32_matmuls_allowed();
  if constexpr (std::is_same_v<scalar_t, at::Half>) {
    gemm_setting = static_cast<int64_t>(context.allowFP16ReductionCuBLAS());
  }
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    gemm_setting = static_cast<int64_t>(context.allowBF16ReductionCuBLAS());
  }
  const FieldStrides& os = a.offset_strides;
  const FieldStrides& ms = a.mask_strides;
  return {input.get_device(), static_cast<int64_t>(input.scalar_type()), gemm_setting, g.batch, g.channels,
          g.height, g.width, g.out_channels, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
          g.dil_h, g.dil_w, g.groups, g.offset_groups, os.n, os.c, os.h, os.w, ms.n, ms.c, ms.h, ms.w,
          a.mask != nullptr, bias.has_value(), vector_loads_apply(g, a, wmat)};
}

// Runs of a candidate timed back to back, after one that warms it up (module load, shared-memory opt-in)
// and is still running when the timing starts: the device waits on the host only where a run's launches
// take longer than the run before it (small problems, where that is the cost a caller pays). Unlike the
// benchmark (benchmarks/runner.py) nothing flushes L2 between runs.
constexpr int kAutotuneTimedRuns = 3;

// The fastest of forward_candidates, each run into out_rows, or nothing when none could run. A candidate
// that cannot take the problem (the implicit GEMM's grid limits, memory) is passed over; a CUDA error
// raises.
template <typename scalar_t>
std::optional<ForwardAlgorithm> fastest_candidate(const at::Tensor& input, const DeformConvGeometry& g,
                                                  const ChunkArgs<scalar_t>& a, const at::Tensor& wmat,
                                                  const std::optional<at::Tensor>& bias, at::Tensor& out_rows) {
  // An error left by earlier work would otherwise surface in the first candidate and be taken for its own.
  C10_CUDA_CHECK(cudaGetLastError());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  StreamTimer timer;
  std::optional<ForwardAlgorithm> best;
  float best_ms = std::numeric_limits<float>::infinity();
  for (const ForwardAlgorithm algo : forward_candidates<scalar_t>(input, g, a, wmat)) {
    const auto run = [&] { forward_by<scalar_t>(algo, input, g, a, wmat, bias, out_rows); };
    float ms = 0.0f;
    try {
      run();
      ms = timer.milliseconds(stream, [&] {
        for (int i = 0; i < kAutotuneTimedRuns; ++i) run();
      });
    } catch (const c10::Error& error) {
      if (is_cuda_error(error)) throw;
      continue;
    }
    if (ms < best_ms) {
      best_ms = ms;
      best = algo;
    }
  }
  return best;
}

// RCM_FSAD_DEFORM_CONV_ALGO=autotune: on the first call of a problem (problem_key), the fastest of
// forward_candidates, remembered for the process (timed outside any lock: two threads meeting a new
// problem at once both time it, and the first to finish is kept). When no candidate could run, the
// default, whose call then raises the error, and nothing is remembered. Under
// torch.use_deterministic_algorithms the default, so that results do not hang on which path won a
// timing; while the stream is captured into a CUDA graph, where nothing may wait on the device, the
// remembered choice, else the default.
template <typename scalar_t>
ForwardAlgorithm autotuned_algorithm(const at::Tensor& input, const DeformConvGeometry& g,
                                     const ChunkArgs<scalar_t>& a, const at::Tensor& wmat,
                                     const std::optional<at::Tensor>& bias, at::Tensor& out_rows) {
  if (at::globalContext().deterministicAlgorithms()) return ForwardAlgorithm::ImplicitGemm;
  static QueryCache<std::vector<int64_t>, ForwardAlgorithm> fastest;
  const std::vector<int64_t> key = problem_key<scalar_t>(input, g, a, wmat, bias);
  if (const std::optional<ForwardAlgorithm> known = fastest.find(key)) return *known;
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    return ForwardAlgorithm::ImplicitGemm;
  }
  const std::optional<ForwardAlgorithm> best = fastest_candidate<scalar_t>(input, g, a, wmat, bias, out_rows);
  return best.has_value() ? fastest.remember(key, *best) : ForwardAlgorithm::ImplicitGemm;
}

at::Tensor deform_conv2d_cuda(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                              const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DeformConvGeometry g =
      check_deform_conv2d_args(input, offset, weight, mask, bias, stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(input.device());
  check_build_runs_on_device();
  const int64_t rows = g.batch * g.out_pixels();
  const ForwardOutput out = forward_output(input, g);
  if (rows > 0 && g.out_channels > 0) {
    const at::Tensor input_nhwc = channels_last_cuda(input);
    const at::Tensor wmat = weight_matrix(weight);
    at::Tensor out_rows = out.nhwc.view({rows, g.out_channels});
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_cuda", [&] {
      const ChunkArgs<scalar_t> a = chunk_args<scalar_t>(input_nhwc, offset, mask);
      ForwardAlgorithm algo = forward_algorithm();
      if (algo == ForwardAlgorithm::Autotune) algo = autotuned_algorithm<scalar_t>(input, g, a, wmat, bias, out_rows);
      forward_by<scalar_t>(algo, input, g, a, wmat, bias, out_rows);
    });
  }
  // The scratch rows into the output, by the transpose kernel.
  if (!out.nhwc.is_alias_of(out.nchw)) nhwc_into_nchw_cuda(out.nhwc, out.nchw);
  return out.nchw;
}

}  // namespace

TORCH_LIBRARY_IMPL(rcm_fsad, CUDA, m) { m.impl("deform_conv2d", &deform_conv2d_cuda); }

}  // namespace rcm_fsad
