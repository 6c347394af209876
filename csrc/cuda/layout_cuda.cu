// Launchers of kernels::batched_transpose_kernel: see layout_cuda.h.
#include "layout_cuda.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <type_traits>

#include "../deform_conv2d_args.h"
#include "../kernels/layout_transpose.cuh"

namespace rcm_fsad {
namespace {

// (batch, rows, cols) -> (batch, cols, rows) on the current stream.
template <typename in_t, typename out_t>
void launch_transpose(int64_t batch, int64_t rows, int64_t cols, const in_t* in, out_t* out) {
  if (batch == 0 || rows == 0 || cols == 0) return;
  const kernels::TransposeGrid grid = kernels::transpose_grid(batch, rows, cols);
  kernels::batched_transpose_kernel<in_t, out_t>
      <<<dim3(grid.x, grid.y, grid.z), kernels::TransposeTiles::kThreads, kernels::transpose_shared_bytes<in_t>(),
         at::cuda::getCurrentCUDAStream()>>>(batch, rows, cols, in, out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor channels_last_cuda(const at::Tensor& t) {
  if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) return t;
  if (!t.is_contiguous()) return t.contiguous(at::MemoryFormat::ChannelsLast);
  const c10::cuda::CUDAGuard guard(t.device());
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::ChannelsLast));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "channels_last_cuda", [&] {
    launch_transpose<scalar_t, scalar_t>(t.size(0), t.size(1), t.size(2) * t.size(3), t.const_data_ptr<scalar_t>(),
                                         out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

void nhwc_into_nchw_cuda(const at::Tensor& nhwc, const at::Tensor& nchw) {
  TORCH_CHECK(nhwc.is_contiguous() && nchw.is_contiguous() && nhwc.dim() == 4 && nchw.dim() == 4 &&
                  nhwc.size(0) == nchw.size(0) && nhwc.size(3) == nchw.size(1) && nhwc.size(1) == nchw.size(2) &&
                  nhwc.size(2) == nchw.size(3),
              "nhwc_into_nchw_cuda: expected contiguous (N, H, W, C) and (N, C, H, W) tensors, got ", nhwc.sizes(),
              " and ", nchw.sizes());
  const c10::cuda::CUDAGuard guard(nchw.device());
  const int64_t batch = nchw.size(0);
  const int64_t channels = nchw.size(1);
  const int64_t pixels = nchw.size(2) * nchw.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, nchw.scalar_type(), "nhwc_into_nchw_cuda", [&] {
    if (nhwc.scalar_type() == nchw.scalar_type()) {
      launch_transpose<scalar_t, scalar_t>(batch, pixels, channels, nhwc.const_data_ptr<scalar_t>(),
                                           nchw.mutable_data_ptr<scalar_t>());
      return;
    }
    if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
      TORCH_CHECK(nhwc.scalar_type() == at::kFloat, "nhwc_into_nchw_cuda: converts to ", nchw.scalar_type(),
                  " from float only, got ", nhwc.scalar_type());
      launch_transpose<float, scalar_t>(batch, pixels, channels, nhwc.const_data_ptr<float>(),
                                        nchw.mutable_data_ptr<scalar_t>());
    } else {
      TORCH_CHECK(false, "nhwc_into_nchw_cuda: expected ", nchw.scalar_type(), " input, got ", nhwc.scalar_type());
    }
  });
}

at::Tensor from_nhwc_cuda(const at::Tensor& nhwc, at::ScalarType dtype, at::MemoryFormat format) {
  if (format == at::MemoryFormat::ChannelsLast) return from_nhwc(nhwc, dtype, format);  // the same order
  at::Tensor nchw = at::empty({nhwc.size(0), nhwc.size(3), nhwc.size(1), nhwc.size(2)}, nhwc.options().dtype(dtype));
  nhwc_into_nchw_cuda(nhwc, nchw);
  return nchw;
}

}  // namespace rcm_fsad
