// Layout conversions of the CUDA backend between NCHW tensors and the NHWC its kernels read and write,
// by kernels::batched_transpose_kernel (csrc/kernels/layout_transpose.cuh).
#pragma once

#include <ATen/ATen.h>

namespace rcm_fsad {

// t (N, C, H, W) with its elements in NHWC order: t itself where it is channels_last-contiguous, else a
// channels_last copy (by the transpose kernel where t is contiguous, by PyTorch's copy otherwise).
at::Tensor channels_last_cuda(const at::Tensor& t);

// Writes nhwc (N, H, W, C), contiguous, into nchw (N, C, H, W), contiguous, in nchw's dtype: the same
// as nhwc's, or a 16-bit type from float (an input gradient summed in float).
void nhwc_into_nchw_cuda(const at::Tensor& nhwc, const at::Tensor& nchw);

// from_nhwc (deform_conv2d_args.h) on CUDA: nhwc (N, H, W, C), contiguous, as an (N, C, H, W) tensor of
// `dtype` in `format`; a contiguous one by the transpose kernel.
at::Tensor from_nhwc_cuda(const at::Tensor& nhwc, at::ScalarType dtype, at::MemoryFormat format);

}  // namespace rcm_fsad
