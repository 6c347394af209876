// CUDA launchers of deform_conv2d. Forward, by RCM_FSAD_DEFORM_CONV_ALGO:
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
// The backward takes the columns path without recomputing the columns in a kernel of their own: the
// columns' gradient (a GEMM), then deform_col2im_kernel, which scatters the input gradient with float
// atomics and writes the columns from the corners it reads for the offset gradient, then the weight
// gradient's GEMM on them. Under torch.use_deterministic_algorithms
// that scatter is off and the input gradient is gathered instead, without atomics: a table of the
// samples (deform_sample_table_kernel), the keys of their corners (deform_sample_keys_kernel) sorted
// stably, then each input element that a corner reaches summed by one thread, its corners in row
// order (deform_col2im_input_gather_kernel). Every kernel of the backward is then deterministic, and the
// GEMMs are cuBLAS's on one stream, deterministic under PyTorch's own rules (some versions of PyTorch
// raise until CUBLAS_WORKSPACE_CONFIG is set).
// Kernel bodies live in ../kernels/.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
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
#include "layout_cuda.h"
#include "stream_timer.h"
#include "wgmma_runs.h"

namespace rcm_fsad {
namespace {

using kernels::DeformConvGeometry;
using kernels::FieldStrides;

constexpr int kThreads = 256;
// The deterministic input gradient's sample table (deform_sample_table_kernel) covers at most this
// many bytes of rows at a time. Each piece also takes its corners' keys (32 bytes an entry), their
// sort (about as much again, PyTorch's) and the runs' starts (16 bytes per (input pixel, offset group)
// of the piece's images): about 4 times this in all.
constexpr int64_t kDeterministicTableBytes = int64_t(64) << 20;
// Columns elements per chunk: 64M elements keeps the buffer at 256 MB in float32.
constexpr int64_t kChunkElements = int64_t(1) << 26;
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
// The largest y and z extents of a grid.
constexpr int64_t kMaxGridYZ = 65535;

// At most as many rows as the environment variable `name` says, for tests of the chunked paths on
// problems small enough to be one chunk otherwise (unset: no limit): a positive integer, or an
// error naming the variable.
int64_t rows_limit(const char* name) {
  const char* text = std::getenv(name);
  if (text == nullptr) return std::numeric_limits<int64_t>::max();
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  TORCH_CHECK(end != text && *end == '\0' && value > 0, name, " must be a positive number of rows, got '", text,
              "'");
  return static_cast<int64_t>(value);
}

// Rows of the columns buffer (the columns path, the backward): at most kChunkElements elements, or
// RCM_FSAD_CHUNK_ROWS rows.
int64_t chunk_rows(const DeformConvGeometry& g) {
  const int64_t rows = std::min(kChunkElements / g.column_width(), rows_limit("RCM_FSAD_CHUNK_ROWS"));
  return std::max<int64_t>(1, std::min(g.batch * g.out_pixels(), rows));
}

int blocks_for(int64_t work_items, int64_t items_per_block) {
  return static_cast<int>(std::min(kMaxBlocks, (work_items + items_per_block - 1) / items_per_block));
}

// 32-bit loop indices whenever the grid-stride loop cannot overflow them.
bool fits_int32(int64_t total) {
  return total + kMaxBlocks * kThreads < std::numeric_limits<int32_t>::max();
}

// Calls f with a value of the index type of grid-stride kernels over `total` items: int32_t where
// fits_int32, int64_t otherwise.
template <typename F>
void with_index_type(int64_t total, F&& f) {
  if (fits_int32(total)) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

template <typename scalar_t>
struct ChunkArgs {
  const scalar_t* input;
  const scalar_t* offset;
  FieldStrides offset_strides;
  const scalar_t* mask;
  FieldStrides mask_strides;
};

template <typename scalar_t>
ChunkArgs<scalar_t> chunk_args(const at::Tensor& input_nhwc, const at::Tensor& offset,
                               const std::optional<at::Tensor>& mask) {
  return {input_nhwc.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(),
          field_strides(offset), mask.has_value() ? mask->const_data_ptr<scalar_t>() : nullptr,
          mask.has_value() ? field_strides(*mask) : FieldStrides{0, 0, 0, 0}};
}

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

// Answers of driver queries, each asked once per process and key: the calls take microseconds, a share
// of a small forward's time. (Also the autotuned forward's choices, each timed once, outside the lock.)
template <typename Key, typename Value>
class QueryCache {
 public:
  template <typename Query>
  Value get(const Key& key, const Query& query) {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (const auto it = known_.find(key); it != known_.end()) return it->second;
    return known_.emplace(key, query()).first->second;
  }

  // The answer for key if it was asked, without asking.
  std::optional<Value> find(const Key& key) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = known_.find(key);
    return it == known_.end() ? std::nullopt : std::optional<Value>(it->second);
  }

  // Keeps value as the answer for key, unless one is kept already (another thread's): returns the kept one.
  Value remember(const Key& key, const Value& value) {
    const std::lock_guard<std::mutex> lock(mutex_);
    return known_.emplace(key, value).first->second;
  }

 private:
  std::mutex mutex_;
  std::map<Key, Value> known_;
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
// build every kernel of this file.
bool tensor_core_code_loaded() {
  static QueryCache<c10::DeviceIndex, bool> cache;
  return cache.get(c10::cuda::current_device(), [] {
    cudaFuncAttributes attributes{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes,
                                         kernels::deform_conv2d_implicit_gemm_wmma_kernel<at::Half, __half, 64>));
    return attributes.ptxVersion >= 80;
  });
}

// Never launched: its static shared memory says which code the device loaded, the fat binary's
// choice. 16 bytes in the code compiled for sm_90a, where the wgmma kernel has its body; none in any
// other. (Read with cudaFuncGetAttributes, which a stream being captured into a CUDA graph allows,
// unlike a copy from a symbol.)
__global__ void wgmma_code_probe_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __shared__ int marker[4];
  marker[threadIdx.x % 4] = static_cast<int>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = marker[(threadIdx.x + 1) % 4];
#else
  out[threadIdx.x] = 0;
#endif
}

// Whether the code the current device runs has the wgmma kernel's body (built for sm_90a, which only
// compute capability 9.0 runs). False, without asking, on any other device, where the build may have no
// code at all (a 9.0a-only build on an sm_80 card: the query would fail).
bool wgmma_code_loaded() {
  static QueryCache<c10::DeviceIndex, bool> cache;
  return cache.get(c10::cuda::current_device(), [] {
    const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
    if (properties->major != 9 || properties->minor != 0) return false;
    cudaFuncAttributes attributes{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, wgmma_code_probe_kernel));
    return attributes.sharedSizeBytes > 0;
  });
}

// A clear error where the build has no code the current device runs: a build made where no GPU is
// visible is for Hopper only (sm_90a), and on another GPU every launch would fail with CUDA's bare "no
// kernel image" error; likewise where the build's code is PTX newer than the driver. Any kernel of this
// file answers for all (the same architectures build every one); the probe is the smallest. An error of
// another kind is raised as it is, and not remembered.
void check_build_runs_on_device() {
  static QueryCache<c10::DeviceIndex, cudaError_t> cache;
  const cudaError_t status = cache.get(c10::cuda::current_device(), [] {
    cudaFuncAttributes attributes{};
    const cudaError_t error = cudaFuncGetAttributes(&attributes, wgmma_code_probe_kernel);
    switch (error) {
      case cudaSuccess:
        return error;
      case cudaErrorNoKernelImageForDevice:
      case cudaErrorInvalidDeviceFunction:
      case cudaErrorUnsupportedPtxVersion:
        (void)cudaGetLastError();  // not sticky: cleared, so that no later check reports it
        return error;
      default:
        C10_CUDA_CHECK(error);
        return error;
    }
  });
  if (status == cudaSuccess) return;
  const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(status != cudaErrorUnsupportedPtxVersion, "deform_conv2d: this build of rcm_fsad_ops runs on ",
              properties->name, " only from PTX newer than its driver takes (", cudaGetErrorString(status),
              "). Update the driver, or rebuild where this GPU is visible (README: Building).");
  TORCH_CHECK(false, "deform_conv2d: this build of rcm_fsad_ops has no CUDA code that ", properties->name,
              " (compute capability ", properties->major, ".", properties->minor,
              ") can run. Rebuild it where this GPU is visible, or with TORCH_CUDA_ARCH_LIST=\"",
              properties->major, ".", properties->minor,
              "\" (README: Building); `python -m rcm_fsad_ops info` lists the architectures it was built for.");
}

// RCM_FSAD_DISABLE_WGMMA=1 keeps the wgmma kernel from running (implicit_gemm_wgmma then takes the
// default path): a switch for a device or driver where it misbehaves, read at each call. Unset, empty
// or 0: it runs where its code is loaded.
bool wgmma_disabled() {
  const char* text = std::getenv("RCM_FSAD_DISABLE_WGMMA");
  if (text == nullptr || *text == '\0' || std::strcmp(text, "0") == 0) return false;
  TORCH_CHECK(std::strcmp(text, "1") == 0, "RCM_FSAD_DISABLE_WGMMA must be 0 or 1, got '", text, "'");
  return true;
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

// How many blocks of `threads` threads and `shared_bytes` of dynamic shared memory of `kernel` one
// SM of the current device holds, after the kernel's opt-in to more than 48 KB of shared memory
// where it needs it; asked once per (kernel, device, size).
template <typename Kernel>
int resident_blocks_per_sm(Kernel kernel, int threads, size_t shared_bytes) {
  using Key = std::tuple<const void*, c10::DeviceIndex, int, size_t>;
  static QueryCache<Key, int> cache;
  const Key key{reinterpret_cast<const void*>(kernel), c10::cuda::current_device(), threads, shared_bytes};
  return cache.get(key, [&] {
    if (shared_bytes > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)));
    }
    int blocks_per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, kernel, threads, shared_bytes));
    return blocks_per_sm;
  });
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

// A sampling kernel (deform_im2col_kernel, deform_col2im_kernel) over `rows` rows with `lanes` lanes a
// sample (kernels::lanes_per_sample): launch(index, lanes_type, blocks) launches it with index_t =
// decltype(index), kLanes = decltype(lanes_type)::value and `blocks` blocks of kThreads.
template <typename Launch>
void launch_sampling(const DeformConvGeometry& g, int64_t rows, int lanes, Launch&& launch) {
  const int64_t warps = kernels::sample_warps(g, rows, lanes);
  const int blocks = blocks_for(warps, kThreads / kernels::kWarpSize);
  with_index_type(warps * kernels::kWarpSize, [&](auto index) {
    kernels::with_sample_lanes(lanes, [&](auto lanes_type) { launch(index, lanes_type, blocks); });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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

template <typename scalar_t>
void launch_col2im(const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a, int64_t first_row,
                   int64_t rows, const scalar_t* grad_columns, at::opmath_type<scalar_t>* grad_input,
                   scalar_t* grad_offset, FieldStrides gos, scalar_t* grad_mask, FieldStrides gms,
                   scalar_t* columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lanes = kernels::lanes_per_sample<scalar_t>(
      g, kernels::col2im_vectors(g, a.input, grad_columns, grad_input, columns));
  launch_sampling(g, rows, lanes, [&](auto index, auto lanes_type, int blocks) {
    using index_t = decltype(index);
    kernels::deform_col2im_kernel<scalar_t, acc_t, index_t, decltype(lanes_type)::value>
        <<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            g, a.input, a.offset, a.offset_strides, a.mask, a.mask_strides, first_row, static_cast<index_t>(rows),
            grad_columns, grad_input, grad_offset, gos, grad_mask, gms, columns);
  });
}

// Rows per piece of the deterministic input gradient: its sample table (one MaskedCorners per
// (row, kernel point, offset group)) stays within kDeterministicTableBytes, or RCM_FSAD_TABLE_ROWS
// rows.
int64_t deterministic_table_rows(const DeformConvGeometry& g, int64_t chunk, int64_t entry_bytes) {
  const int64_t row_bytes = g.kernel_points() * g.offset_groups * entry_bytes;
  return std::clamp<int64_t>(std::min(kDeterministicTableBytes / row_bytes, rows_limit("RCM_FSAD_TABLE_ROWS")), 1,
                             chunk);
}

// The deterministic input gradient of rows [first_row, first_row + rows), whose columns gradient
// starts at grad_columns, added to grad_input: in pieces of at most table_rows rows, in row order, the
// piece's sample table (deform_sample_table_kernel into `table`), the keys of its corners
// (deform_sample_keys_kernel), their stable sort and the start of each key's run (PyTorch's sort and
// searchsorted, both deterministic), then deform_col2im_input_gather_kernel.
template <typename scalar_t>
void launch_col2im_input_deterministic(const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a,
                                       int64_t first_row, int64_t rows, int64_t table_rows,
                                       const scalar_t* grad_columns, at::Tensor& table,
                                       at::opmath_type<scalar_t>* grad_input) {
  // An image of no pixels (its output all padding) has no input gradient to gather, and the gather's
  // grid would have no blocks, which CUDA refuses.
  if (g.height * g.width == 0) return;
  using acc_t = at::opmath_type<scalar_t>;
  using Corners = kernels::MaskedCorners<acc_t>;
  Corners* entries = reinterpret_cast<Corners*>(table.mutable_data_ptr<uint8_t>());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::TensorOptions index_options = table.options().dtype(at::kLong);
  const int64_t image_keys = g.height * g.width * g.offset_groups;
  for (int64_t p0 = first_row; p0 < first_row + rows; p0 += table_rows) {
    const int64_t len = std::min(table_rows, first_row + rows - p0);
    const scalar_t* gc = grad_columns + (p0 - first_row) * g.column_width();
    const int64_t entries_total = kernels::sample_count(g, len);
    const int64_t first_image = p0 / g.out_pixels();
    const int64_t images = (p0 + len - 1) / g.out_pixels() - first_image + 1;
    const int64_t elements = images * g.height * g.width * g.channels;
    at::Tensor keys = at::empty({4 * entries_total}, index_options);
    with_index_type(std::max(4 * entries_total, elements), [&](auto index) {
      using index_t = decltype(index);
      kernels::deform_sample_table_kernel<scalar_t, acc_t, index_t><<<blocks_for(entries_total, kThreads), kThreads,
                                                                       0, stream>>>(
          g, a.offset, a.offset_strides, a.mask, a.mask_strides, p0, static_cast<index_t>(len), entries);
      kernels::deform_sample_keys_kernel<acc_t, index_t><<<blocks_for(4 * entries_total, kThreads), kThreads, 0,
                                                           stream>>>(g, entries, static_cast<index_t>(entries_total),
                                                                     keys.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const auto [sorted, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
      // Where the run of each key of these images begins, and where the last one ends.
      const at::Tensor starts = at::searchsorted(
          sorted, at::arange(first_image * image_keys, (first_image + images) * image_keys + 1, index_options));
      // The kernel visits only the band of pixels the piece's corners reach, which the host does not
      // know: a grid the device holds at once strides over it, where one sized to the images would
      // schedule mostly blocks with nothing to do on a large image.
      const auto gather = kernels::deform_col2im_input_gather_kernel<scalar_t, acc_t, index_t>;
      const int64_t resident = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} *
                               resident_blocks_per_sm(gather, kThreads, 0);
      gather<<<std::min<int64_t>(blocks_for(elements, kThreads), resident), kThreads, 0, stream>>>(
          g, entries, order.const_data_ptr<int64_t>(), sorted.const_data_ptr<int64_t>(),
          starts.const_data_ptr<int64_t>(), p0, static_cast<index_t>(len), gc, grad_input);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& weight, const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DeformConvGeometry g = check_deform_conv2d_backward_args(grad_output, input, offset, weight,
                                                                 mask, stride, padding, dilation);
  // Under torch.use_deterministic_algorithms, no atomic scatter (its sums depend on the order the
  // atomics land in): so nothing here calls alertNotDeterministic.
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const c10::cuda::CUDAGuard guard(input.device());
  check_build_runs_on_device();
  const at::ScalarType acc_type = at::toOpMathType(input.scalar_type());
  at::Tensor grad_input = at::zeros({g.batch, g.height, g.width, g.channels}, input.options().dtype(acc_type));
  OffsetMaskGradients sample_gradients = offset_mask_gradients(input, offset, mask, g);
  at::Tensor grad_offset = sample_gradients.offset;
  at::Tensor grad_mask = sample_gradients.mask;
  const at::Tensor wmat = weight_matrix(weight);
  // In acc_type: summed over every chunk of rows, rounded to the weight's dtype once.
  at::Tensor grad_wmat = at::zeros(wmat.sizes(), wmat.options().dtype(acc_type));
  const int64_t rows = g.batch * g.out_pixels();
  if (rows > 0 && g.out_channels > 0) {
    const at::Tensor input_nhwc = channels_last_cuda(input);
    const at::Tensor grad_rows = channels_last_cuda(grad_output).permute({0, 2, 3, 1}).reshape({rows, g.out_channels});
    const int64_t chunk = chunk_rows(g);
    at::Tensor cols = at::empty({chunk, g.column_width()}, input.options());
    at::Tensor grad_cols = at::empty({chunk, g.column_width()}, input.options());
    const int64_t entry_bytes = acc_type == at::kDouble ? sizeof(kernels::MaskedCorners<double>)
                                                        : sizeof(kernels::MaskedCorners<float>);
    const int64_t table_rows = deterministic ? deterministic_table_rows(g, chunk, entry_bytes) : 0;
    at::Tensor table = at::empty({table_rows * g.kernel_points() * g.offset_groups * entry_bytes},
                                 input.options().dtype(at::kByte));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "deform_conv2d_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const ChunkArgs<scalar_t> a = chunk_args<scalar_t>(input_nhwc, offset, mask);
      const FieldStrides gos = field_strides(grad_offset);
      const FieldStrides gms = mask.has_value() ? field_strides(grad_mask) : FieldStrides{0, 0, 0, 0};
      scalar_t* gm_ptr = mask.has_value() ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr;
      for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t len = std::min(chunk, rows - r0);
        at::Tensor grad_cols_chunk = grad_cols.narrow(0, 0, len);
        columns_gradient(grad_rows.narrow(0, r0, len), wmat, grad_cols_chunk, g);
        const scalar_t* gc_ptr = grad_cols.const_data_ptr<scalar_t>();
        acc_t* gi_ptr = grad_input.mutable_data_ptr<acc_t>();
        launch_col2im<scalar_t>(g, a, r0, len, gc_ptr, deterministic ? nullptr : gi_ptr,
                                grad_offset.mutable_data_ptr<scalar_t>(), gos, gm_ptr, gms,
                                cols.mutable_data_ptr<scalar_t>());
        add_weight_gradient(grad_rows.narrow(0, r0, len), cols.narrow(0, 0, len), grad_wmat, g);
        if (deterministic) {
          launch_col2im_input_deterministic<scalar_t>(g, a, r0, len, table_rows, gc_ptr, table, gi_ptr);
        }
      }
    });
  }
  return {from_nhwc_cuda(grad_input, input.scalar_type(), output_memory_format(input)), grad_offset,
          weight_from_matrix(grad_wmat, weight), grad_mask};
}

}  // namespace

bool wgmma_kernel_runs() { return !wgmma_disabled() && wgmma_code_loaded(); }

TORCH_LIBRARY_IMPL(rcm_fsad, CUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_cuda);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cuda);
}

}  // namespace rcm_fsad
