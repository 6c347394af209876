#include "deform_conv2d_args.h"

#include <ATen/ATen.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include "torch_compat.h"

namespace rcm_fsad {
namespace {

void check_rank4(const at::Tensor& t, const char* name, const char* layout) {
  TORCH_CHECK(t.dim() == 4, "deform_conv2d: expected ", name, " to be a 4-D tensor ", layout,
              ", got a ", t.dim(), "-D tensor of shape ", t.sizes());
}

void check_float(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "deform_conv2d: expected ", name,
              " to be a floating-point tensor, got dtype ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), "deform_conv2d: expected ", name,
              " to have the same dtype as input (", input.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), "deform_conv2d: expected ", name,
              " to be on the same device as input (", input.device(), "), got ", t.device());
}

void check_pair(at::IntArrayRef v, const char* name, int64_t minimum) {
  TORCH_CHECK(v.size() == 2, "deform_conv2d: expected ", name, " to have 2 values, got ", v);
  TORCH_CHECK(v[0] >= minimum && v[1] >= minimum, "deform_conv2d: expected ", name,
              " values to be at least ", minimum, ", got ", v);
}

// Outputs along one axis of `size` input pixels, as torchvision computes them (division toward zero: a
// kernel overhanging the padded input by less than the stride still gives one). The padded input and the
// kernel's reach must fit in int64: padding or dilation near 2^63 would wrap them into a plausible size.
int64_t outputs_along(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dil,
                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  int64_t twice_pad = 0, padded = 0, reach = 0;
  const bool wraps = c10::mul_overflows(pad, int64_t{2}, &twice_pad) ||
                     c10::add_overflows(size, twice_pad, &padded) || c10::mul_overflows(dil, kernel - 1, &reach);
  TORCH_CHECK(!wraps, "deform_conv2d: expected padding and dilation small enough that the padded input (size + "
              "2*padding) and the kernel's reach (dilation*(kernel-1)) fit in 64 bits, got padding ", padding,
              " and dilation ", dilation);
  return (padded - reach - 1) / stride + 1;
}

}  // namespace

kernels::DeformConvGeometry check_deform_conv2d_args(const at::Tensor& input, const at::Tensor& offset,
                                                     const at::Tensor& weight,
                                                     const std::optional<at::Tensor>& mask,
                                                     const std::optional<at::Tensor>& bias,
                                                     at::IntArrayRef stride, at::IntArrayRef padding,
                                                     at::IntArrayRef dilation) {
  check_rank4(input, "input", "(N, C_in, H, W)");
  check_rank4(weight, "weight", "(C_out, C_in/groups, kh, kw)");
  check_rank4(offset, "offset", "(N, 2*offset_groups*kh*kw, H_out, W_out)");
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "deform_conv2d: expected input to be a floating-point tensor, got dtype ",
              input.scalar_type());
  check_float(weight, "weight", input);
  check_float(offset, "offset", input);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);

  kernels::DeformConvGeometry g{};
  g.batch = input.size(0);
  g.channels = input.size(1);
  g.height = input.size(2);
  g.width = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dil_h = dilation[0];
  g.dil_w = dilation[1];

  TORCH_CHECK(g.kernel_h > 0 && g.kernel_w > 0, "deform_conv2d: expected weight to have a non-empty "
              "kernel, got weight of shape ", weight.sizes());
  TORCH_CHECK(g.channels > 0, "deform_conv2d: expected input to have at least one channel, got input of shape ",
              input.sizes());
  TORCH_CHECK(weight.size(1) > 0 && g.channels % weight.size(1) == 0,
              "deform_conv2d: weight.shape[1] (C_in/groups = ", weight.size(1),
              ") must divide the input channels (", g.channels, ")");
  g.groups = g.channels / weight.size(1);
  TORCH_CHECK(g.out_channels % g.groups == 0, "deform_conv2d: groups (", g.groups,
              ", from input channels / weight.shape[1]) must divide the output channels "
              "(weight.shape[0] = ", g.out_channels, ")");

  const int64_t points = g.kernel_h * g.kernel_w;
  TORCH_CHECK(offset.size(1) > 0 && offset.size(1) % (2 * points) == 0,
              "deform_conv2d: offset.shape[1] must be a positive multiple of 2*kh*kw = ", 2 * points,
              " (2*offset_groups*kh*kw), got ", offset.size(1));
  g.offset_groups = offset.size(1) / (2 * points);
  TORCH_CHECK(g.channels % g.offset_groups == 0, "deform_conv2d: offset groups (", g.offset_groups,
              ", from offset.shape[1] / (2*kh*kw)) must divide the input channels (", g.channels, ")");

  // reference.output_size, which the fake kernel uses, agrees.
  g.out_h = outputs_along(g.height, g.kernel_h, g.stride_h, g.pad_h, g.dil_h, padding, dilation);
  g.out_w = outputs_along(g.width, g.kernel_w, g.stride_w, g.pad_w, g.dil_w, padding, dilation);
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, "deform_conv2d: the output would be empty: input of size ",
              g.height, "x", g.width, " with kernel ", g.kernel_h, "x", g.kernel_w, ", padding ",
              padding, ", dilation ", dilation, ", stride ", stride);

  TORCH_CHECK(offset.size(0) == g.batch && offset.size(2) == g.out_h && offset.size(3) == g.out_w,
              "deform_conv2d: expected offset of shape (", g.batch, ", ", offset.size(1), ", ", g.out_h,
              ", ", g.out_w, ") to match the batch and output size, got ", offset.sizes());
  if (mask.has_value()) {
    check_rank4(*mask, "mask", "(N, offset_groups*kh*kw, H_out, W_out)");
    check_float(*mask, "mask", input);
    TORCH_CHECK(mask->size(0) == g.batch && mask->size(1) == g.offset_groups * points &&
                    mask->size(2) == g.out_h && mask->size(3) == g.out_w,
                "deform_conv2d: expected mask of shape (", g.batch, ", ", g.offset_groups * points, ", ",
                g.out_h, ", ", g.out_w, "), got ", mask->sizes());
  }
  if (bias.has_value()) {
    check_float(*bias, "bias", input);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.out_channels,
                "deform_conv2d: expected bias of shape (", g.out_channels, "), got ", bias->sizes());
  }
  return g;
}

kernels::DeformConvGeometry check_deform_conv2d_backward_args(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& weight, const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation) {
  const kernels::DeformConvGeometry g =
      check_deform_conv2d_args(input, offset, weight, mask, std::nullopt, stride, padding, dilation);
  check_float(grad_output, "grad_output", input);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == g.batch &&
                  grad_output.size(1) == g.out_channels && grad_output.size(2) == g.out_h &&
                  grad_output.size(3) == g.out_w,
              "deform_conv2d_backward: expected grad_output of shape (", g.batch, ", ", g.out_channels,
              ", ", g.out_h, ", ", g.out_w, "), got ", grad_output.sizes());
  return g;
}

kernels::FieldStrides field_strides(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

at::MemoryFormat output_memory_format(const at::Tensor& input) {
  const bool channels_last =
      input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous();
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

at::Tensor empty_output(const at::Tensor& input, const kernels::DeformConvGeometry& g) {
  return at::empty({g.batch, g.out_channels, g.out_h, g.out_w},
                   input.options().memory_format(output_memory_format(input)));
}

ForwardOutput forward_output(const at::Tensor& input, const kernels::DeformConvGeometry& g) {
  at::Tensor nchw = empty_output(input, g);
  at::Tensor nhwc = output_memory_format(input) == at::MemoryFormat::ChannelsLast
                        ? nchw.permute({0, 2, 3, 1})
                        : at::empty({g.batch, g.out_h, g.out_w, g.out_channels}, input.options());
  return {nchw, nhwc};
}

at::Tensor from_nhwc(const at::Tensor& nhwc, at::ScalarType dtype, at::MemoryFormat format) {
  at::Tensor nchw = at::empty({nhwc.size(0), nhwc.size(3), nhwc.size(1), nhwc.size(2)},
                              nhwc.options().dtype(dtype).memory_format(format));
  nchw.permute({0, 2, 3, 1}).copy_(nhwc);
  return nchw;
}

OffsetMaskGradients offset_mask_gradients(const at::Tensor& input, const at::Tensor& offset,
                                          const std::optional<at::Tensor>& mask,
                                          const kernels::DeformConvGeometry& g) {
  const auto like = [&](const at::Tensor& t) { return g.out_channels > 0 ? at::empty_like(t) : at::zeros_like(t); };
  return {like(offset), mask.has_value() ? like(*mask) : at::empty({0}, input.options())};
}

at::Tensor weight_matrix(const at::Tensor& weight) {
  return weight.permute({0, 2, 3, 1}).contiguous().view({weight.size(0), weight.size(1) * weight.size(2) * weight.size(3)});
}

at::Tensor weight_from_matrix(const at::Tensor& matrix, const at::Tensor& weight) {
  const at::Tensor ohwi = matrix.view({weight.size(0), weight.size(2), weight.size(3), weight.size(1)});
  // A channels_last weight's gradient is the matrix itself, seen as (C_out, C_in, kh, kw): no copy, and
  // none in autograd's accumulation either, which makes a gradient take its parameter's strides.
  if (output_memory_format(weight) == at::MemoryFormat::ChannelsLast) {
    return ohwi.to(weight.scalar_type()).permute({0, 3, 1, 2});
  }
  at::Tensor result = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  result.permute({0, 2, 3, 1}).copy_(ohwi);
  return result;
}

void columns_times_weight(const at::Tensor& columns, const at::Tensor& wmat,
                          const std::optional<at::Tensor>& bias, at::Tensor& out_rows,
                          const kernels::DeformConvGeometry& g) {
  const int64_t in_cols = g.kernel_points() * g.channels_per_group();
  const int64_t out_cols = g.out_channels / g.groups;
  for (int64_t group = 0; group < g.groups; ++group) {
    const at::Tensor a = columns.narrow(1, group * in_cols, in_cols);
    const at::Tensor b = wmat.narrow(0, group * out_cols, out_cols).t();
    at::Tensor out = out_rows.narrow(1, group * out_cols, out_cols);
    if (bias.has_value()) {
      at::addmm_out(out, bias->narrow(0, group * out_cols, out_cols), a, b);
    } else {
      at::mm_out(out, a, b);
    }
  }
}

void columns_gradient(const at::Tensor& grad_rows, const at::Tensor& wmat, at::Tensor& grad_columns,
                      const kernels::DeformConvGeometry& g) {
  const int64_t in_cols = g.kernel_points() * g.channels_per_group();
  const int64_t out_cols = g.out_channels / g.groups;
  for (int64_t group = 0; group < g.groups; ++group) {
    at::Tensor gc = grad_columns.narrow(1, group * in_cols, in_cols);
    at::mm_out(gc, grad_rows.narrow(1, group * out_cols, out_cols), wmat.narrow(0, group * out_cols, out_cols));
  }
}

void add_weight_gradient(const at::Tensor& grad_rows, const at::Tensor& columns, at::Tensor& grad_wmat,
                         const kernels::DeformConvGeometry& g) {
  const int64_t in_cols = g.kernel_points() * g.channels_per_group();
  const int64_t out_cols = g.out_channels / g.groups;
  for (int64_t group = 0; group < g.groups; ++group) {
    const at::Tensor go = grad_rows.narrow(1, group * out_cols, out_cols);
    at::Tensor gw = grad_wmat.narrow(0, group * out_cols, out_cols);
    const at::Tensor cols = columns.narrow(1, group * in_cols, in_cols);
    if (gw.scalar_type() == cols.scalar_type()) {
      gw.addmm_(go.t(), cols);
    } else {
      // 16-bit operands: the GEMM hands back its float32 sums (gw is float32), so that the weight
      // gradient, summed over every block of rows, is rounded to 16 bits once, by the caller.
      gw.add_(mm_in_float(go.t(), cols));
    }
  }
}

}  // namespace rcm_fsad
