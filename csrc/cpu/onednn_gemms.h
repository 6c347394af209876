// The CPU backend's float32 GEMMs with the weight (a tile's columns times it, and the output gradient times
// its transpose) as oneDNN 1x1 convolutions: a conv group's columns are its input channels, a tile's rows its
// pixels. ATen's float32 GEMM is BLAS's (MKL in the pip wheels), whose kernels on an AVX512 AMD EPYC are
// its AVX2 ones: there oneDNN ran a tile's product (256 x 1152 x 128, one thread) at 185 GFLOP/s where the
// GEMM ran at 101, and the forward of the three benchmark shapes in 0.57-0.73x the time (2 threads). Its
// float32 sums are less accurate: 1.6x the RMS error of BLAS's against float64 at 128 to 512 channels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/ops/mkldnn_convolution.h>

#include <optional>

#include "../kernels/deform_conv2d_math.cuh"

namespace rcm_fsad::cpu {

// Whether oneDNN may run: torch was built with it, and it is on (torch.backends.mkldnn.enabled).
inline bool onednn_on() { return at::hasMKLDNN() && at::globalContext().userEnabledMkldnn(); }

// Whether t's GEMMs take oneDNN: float32, with onednn_on. float64 stays with BLAS, and bfloat16 with ATen's
// GEMM, which hands it to oneDNN itself.
inline bool onednn_float_gemms(const at::Tensor& t) { return t.scalar_type() == at::kFloat && onednn_on(); }

// rows (R, width), contiguous, as the image (1, width, R, 1) in channels_last, without a copy.
inline at::Tensor rows_as_image(const at::Tensor& rows) {
  return rows.view({1, rows.size(0), 1, rows.size(1)}).permute({0, 3, 1, 2});
}

// out[r, :] = the convolution of the tile's rows with weight (O, I, 1, 1) in `groups` groups, + bias.
inline void convolve_rows(const at::Tensor& rows, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          int64_t groups, at::Tensor& out) {
  const at::Tensor image = at::mkldnn_convolution(rows_as_image(rows), weight, bias, {0, 0}, {1, 1}, {1, 1}, groups);
  out.copy_(image.permute({0, 2, 3, 1}).reshape({rows.size(0), weight.size(0)}));
}

// The weight matrix (C_out, K*C_g) as convolve_rows takes it to multiply a tile's columns (GroupMajor:
// conv group after conv group) by it: (C_out, K*C_g, 1, 1).
inline at::Tensor columns_weight(const at::Tensor& wmat) { return wmat.view({wmat.size(0), wmat.size(1), 1, 1}); }

// The weight matrix's transpose, group by group, as convolve_rows takes it to multiply output-gradient rows
// by it: (groups * K*C_g, C_out / groups, 1, 1).
inline at::Tensor columns_gradient_weight(const at::Tensor& wmat, const kernels::DeformConvGeometry& g) {
  const int64_t out_cols = g.out_channels / g.groups;
  return wmat.view({g.groups, out_cols, wmat.size(1)})
      .transpose(1, 2)
      .reshape({g.groups * wmat.size(1), out_cols, 1, 1})
      .contiguous();
}

}  // namespace rcm_fsad::cpu
