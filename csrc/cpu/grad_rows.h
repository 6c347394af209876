// The output gradient as the CPU backward reads it: NHWC rows, a tile at a time.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../kernels/deform_conv2d_math.cuh"
#include "group_loops.h"
#include "layout_copies.h"

namespace rcm_fsad::cpu {

using kernels::DeformConvGeometry;

// t with its dimension `dim` of C_out output channels in output-major order (GroupBlock::output_major),
// as group_loops.h takes the weights, the bias and the output gradient: a view, to make contiguous.
inline at::Tensor output_major(const at::Tensor& t, int64_t dim, const DeformConvGeometry& g) {
  return t.unflatten(dim, {g.groups, g.out_channels / g.groups}).transpose(dim, dim + 1).flatten(dim, dim + 1);
}

// The output gradient (N, C_out, H_out, W_out) as rows (N * H_out * W_out, C_out) of `dtype`, NHWC, their
// channels output-major (GroupBlock::output_major) for the group loops: a view of it where it is such rows
// already, else each tile's rows gathered into a worker's buffer, or with `whole` all of them copied up
// front (for tiles that take a few of the rows' channels each). A whole batch's copy, made up front, was
// mapped afresh by glibc on every call, as WorkerImages (sampling.h) says of the input.
class GradRows {
 public:
  GradRows(const at::Tensor& grad_output, at::ScalarType dtype, bool output_major_channels, bool whole,
           const DeformConvGeometry& g)
      : g_(g), options_(grad_output.options().dtype(dtype)) {
    const at::Tensor nhwc = grad_output.permute({0, 2, 3, 1});
    if (!output_major_channels && nhwc.is_contiguous() && grad_output.scalar_type() == dtype) {
      view_ = nhwc.view({-1, g.out_channels});
      return;
    }
    if (whole) {
      view_ = at::empty({g.batch * g.out_pixels(), g.out_channels}, options_);
      view_.view({g.batch, g.out_h, g.out_w, g.out_channels})
          .copy_(output_major_channels ? output_major(nhwc, 3, g) : nhwc);
      return;
    }
    source_ = evenly_spaced(grad_output);
    pixel_stride_ = *pixel_stride(source_);
    const GroupBlock block{g.groups, 0, g.out_channels / g.groups, 0};
    for (int64_t oc = 0; oc < g.out_channels; ++oc) {
      column_.push_back(output_major_channels ? block.output_major(oc / block.m, oc % block.m) : oc);
    }
  }

  // A worker's buffer for tiles of at most `rows` rows (empty where the rows are views).
  at::Tensor buffer(int64_t rows) const {
    return at::empty({view_.defined() ? 0 : rows, g_.out_channels}, options_);
  }

  // Rows [r0, r0 + len), of any images: a (len, C_out) tensor whose rows are contiguous, a view or buffer's
  // first len rows.
  at::Tensor rows(int64_t r0, int64_t len, const at::Tensor& buffer, bool avx2_fma) const {
    if (view_.defined()) return view_.narrow(0, r0, len);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, buffer.scalar_type(), "GradRows", [&] {
      for (int64_t a = 0; a < len;) {
        const int64_t n = (r0 + a) / g_.out_pixels();
        const int64_t pixel = r0 + a - n * g_.out_pixels();
        const int64_t seg = std::min(len - a, g_.out_pixels() - pixel);
        gather_image_rows(source_, n, pixel, seg, pixel_stride_, column_.data(),
                          buffer.mutable_data_ptr<scalar_t>() + a * g_.out_channels, avx2_fma);
        a += seg;
      }
    });
    return buffer.narrow(0, 0, len);
  }

 private:
  DeformConvGeometry g_;
  at::TensorOptions options_;    // the rows'
  at::Tensor view_;              // (N * H_out * W_out, C_out), where grad_output is such rows or `whole`
  at::Tensor source_;            // else grad_output (or a contiguous copy),
  int64_t pixel_stride_ = 0;     // its pixels' stride,
  std::vector<int64_t> column_;  // and the column of each output channel
};

}  // namespace rcm_fsad::cpu
