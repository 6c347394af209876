// Argument checks and layout decisions shared by the CPU and CUDA backends of deform_conv2d.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

#include "kernels/deform_conv2d_math.cuh"

namespace rcm_fsad {

// Validates every argument (ranks, dtypes, devices, channel and group counts, offset/mask/bias
// shapes against the output size) with messages that name the argument, and returns the geometry.
kernels::DeformConvGeometry check_deform_conv2d_args(const at::Tensor& input, const at::Tensor& offset,
                                                     const at::Tensor& weight,
                                                     const std::optional<at::Tensor>& mask,
                                                     const std::optional<at::Tensor>& bias,
                                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                                     at::IntArrayRef dilation);

// Also checks grad_output against the output shape.
kernels::DeformConvGeometry check_deform_conv2d_backward_args(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& weight, const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation);

kernels::FieldStrides field_strides(const at::Tensor& t);

// Results come back in the input's layout: channels_last for a channels_last input, else contiguous.
// Mirrored by rcm_fsad_ops.ops.deform_conv2d._output_memory_format for the fake kernels.
at::MemoryFormat output_memory_format(const at::Tensor& input);

// A forward's output, (N, C_out, H_out, W_out) in the input's layout (output_memory_format) with the
// strides torch.empty gives it, which the fake kernels report. It is no view, so that autograd lets a
// caller modify it in place.
at::Tensor empty_output(const at::Tensor& input, const kernels::DeformConvGeometry& g);

// The CUDA forward's output: `nchw`, empty_output's tensor, which it returns; and `nhwc`, the
// (N, H_out, W_out, C_out) buffer its kernels write: in channels_last the output itself, otherwise a
// scratch tensor that it transposes in (csrc/cuda/layout_cuda.h).
struct ForwardOutput {
  at::Tensor nchw;
  at::Tensor nhwc;
};
ForwardOutput forward_output(const at::Tensor& input, const kernels::DeformConvGeometry& g);

// An NHWC buffer (N, H, W, C) copied into a new (N, C, H, W) tensor of `dtype` in `format`, with the
// strides torch.empty gives it.
at::Tensor from_nhwc(const at::Tensor& nhwc, at::ScalarType dtype, at::MemoryFormat format);

// weight (C_out, C_in/groups, kh, kw) -> (C_out, kh*kw*C_in/groups), the GEMM operand whose
// column order matches kernels::DeformConvGeometry::column_index within one conv group.
at::Tensor weight_matrix(const at::Tensor& weight);

// Inverse of weight_matrix for the weight gradient, `matrix` (C_out, kh*kw*C_in/groups) contiguous: a
// tensor of weight's shape and dtype, in weight's memory format (output_memory_format), which the caller
// must not alias elsewhere (a channels_last result is a view of it, or of its conversion to the dtype).
at::Tensor weight_from_matrix(const at::Tensor& matrix, const at::Tensor& weight);

// The offset gradient, and the mask gradient (empty without a mask), for a backward to fill: left
// uninitialised when its kernels write every element, zeros when they do not run because there are no
// output channels (nothing then depends on the offset or the mask).
struct OffsetMaskGradients {
  at::Tensor offset;
  at::Tensor mask;
};
OffsetMaskGradients offset_mask_gradients(const at::Tensor& input, const at::Tensor& offset,
                                          const std::optional<at::Tensor>& mask,
                                          const kernels::DeformConvGeometry& g);

// out_rows (rows, C_out) = columns (rows, C_in*K) x wmat^T (+ bias), one GEMM per conv group.
void columns_times_weight(const at::Tensor& columns, const at::Tensor& wmat,
                          const std::optional<at::Tensor>& bias, at::Tensor& out_rows,
                          const kernels::DeformConvGeometry& g);

// grad_columns = grad_rows x wmat, per conv group, for a block of rows.
void columns_gradient(const at::Tensor& grad_rows, const at::Tensor& wmat, at::Tensor& grad_columns,
                      const kernels::DeformConvGeometry& g);

// grad_wmat += grad_rows^T x columns, per conv group, for a block of rows. grad_wmat is in the operands'
// dtype, or in float32 for float16 and bfloat16 operands.
void add_weight_gradient(const at::Tensor& grad_rows, const at::Tensor& columns, at::Tensor& grad_wmat,
                         const kernels::DeformConvGeometry& g);

}  // namespace rcm_fsad
