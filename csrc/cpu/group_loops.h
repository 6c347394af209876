// The products of a grouped layer's columns with its weights as plain loops over the conv groups,
// for layers whose groups are too small for a GEMM call each: a depthwise 3x3 layer's group is a
// 9 x 1 matrix, and its forward spent as long in the calls (one per group and tile of rows) and their
// views as in its sampling. Torch-free: raw pointers, one tile of rows at a time.
//
// The columns these loops read and write are point-major: a row holds kernel point after kernel point,
// each with all the block's channels in order (ColumnWindow's PointMajor layout), so that the sampling
// fills and reads them in runs as long as an offset group. Conv group gi's channel c' at point k is
// column k * C + gi * cg + c' of a row.
//
// The innermost loops run along the groups. Outputs are taken output-major (GroupBlock::output_major:
// output o of every group, then output o + 1): the weights, the bias and the output gradient come in
// that order, and the forward sums a row in it (in place in an NHWC row where a group has one output),
// so the loops read and write outputs and weights with unit strides, and the columns with a stride of cg.
// Each function runs them once with a literal unit stride where a group has one input channel (a
// depthwise layer's, with or without a channel multiplier), where they vectorise, and once with the
// block's stride elsewhere.
#pragma once

#include <cstdint>

namespace rcm_fsad::cpu {

// The conv groups a loop covers: `groups` groups of `cg` input channels and `m` output channels each,
// over `points` kernel points.
struct GroupBlock {
  int64_t groups;
  int64_t cg;
  int64_t m;
  int64_t points;

  int64_t channels() const { return groups * cg; }
  int64_t outputs() const { return groups * m; }
  // Where output o of group gi (output channel gi * m + o of the block) sits in output-major order.
  int64_t output_major(int64_t gi, int64_t o) const { return o * groups + gi; }
};

// out[r * row_stride + oc * channel_stride] = bias_om[o * groups + gi] (0 without bias) + sum over k, c'
// of cols[r, k * C + gi * cg + c'] * weight_om[(k * cg + c') * C_out + o * groups + gi], for the len rows
// of a tile and oc = gi * m + o. cols: len x (points * C). weight_om: (points * cg) x C_out, the weight
// matrix transposed, its columns output-major, so the block is the whole layer (C_out = b.outputs()).
// out: NHWC rows (channel_stride 1; both strides 1 for one row) or NCHW planes (row_stride 1). scratch:
// C_out values, a row in output-major order where that is not the row's own.
template <typename T>
[[gnu::always_inline]] inline void group_loops_forward(const GroupBlock& b, int64_t len, const T* cols,
                                                       const T* weight_om, const T* bias_om, T* out,
                                                       int64_t row_stride, int64_t channel_stride, T* scratch) {
  const int64_t channels = b.channels(), outputs = b.outputs();
  // With one output a group, output-major order is an NHWC row's own: the sums go there directly.
  const bool in_place = b.m == 1 && channel_stride == 1;
  const auto loops = [&](int64_t cg) __attribute__((always_inline)) {
    for (int64_t r = 0; r < len; ++r) {
      T* out_row = out + r * row_stride;
      T* acc = in_place ? out_row : scratch;
      for (int64_t i = 0; i < outputs; ++i) acc[i] = bias_om != nullptr ? bias_om[i] : T(0);
      const T* col_row = cols + r * b.points * channels;
      for (int64_t k = 0; k < b.points; ++k) {
        for (int64_t c = 0; c < cg; ++c) {
          const T* __restrict__ a = col_row + k * channels + c;
          for (int64_t o = 0; o < b.m; ++o) {
            T* __restrict__ acc_o = acc + o * b.groups;
            const T* __restrict__ w = weight_om + (k * cg + c) * outputs + o * b.groups;
            for (int64_t gi = 0; gi < b.groups; ++gi) acc_o[gi] += a[gi * cg] * w[gi];
          }
        }
      }
      if (!in_place) {
        for (int64_t gi = 0; gi < b.groups; ++gi) {
          for (int64_t o = 0; o < b.m; ++o) out_row[(gi * b.m + o) * channel_stride] = acc[b.output_major(gi, o)];
        }
      }
    }
  };
  if (b.cg == 1) return loops(1);
  loops(b.cg);
}

// grad_cols[r, k * C + gi * cg + c'] = sum over o of grad_rows[r, o * groups + gi] *
// weight_om[(k * cg + c') * C_out + o * groups + gi]: the columns' gradient, len x (points * C). As in
// group_loops_forward, the block is the whole layer. grad_rows: output-major, rows grad_stride apart.
template <typename T>
[[gnu::always_inline]] inline void group_loops_columns_gradient(const GroupBlock& b, int64_t len,
                                                                const T* grad_rows, int64_t grad_stride,
                                                                const T* weight_om, T* grad_cols) {
  const int64_t channels = b.channels(), outputs = b.outputs();
  const auto loops = [&](int64_t cg) __attribute__((always_inline)) {
    for (int64_t r = 0; r < len; ++r) {
      const T* grad_row = grad_rows + r * grad_stride;
      T* gc_row = grad_cols + r * b.points * channels;
      for (int64_t k = 0; k < b.points; ++k) {
        for (int64_t c = 0; c < cg; ++c) {
          T* __restrict__ gc = gc_row + k * channels + c;
          const T* __restrict__ w = weight_om + (k * cg + c) * outputs;
          const T* __restrict__ g0 = grad_row;
          for (int64_t gi = 0; gi < b.groups; ++gi) gc[gi * cg] = g0[gi] * w[gi];
          for (int64_t o = 1; o < b.m; ++o) {
            const T* __restrict__ go = grad_row + o * b.groups;
            const T* __restrict__ wo = w + o * b.groups;
            for (int64_t gi = 0; gi < b.groups; ++gi) gc[gi * cg] += go[gi] * wo[gi];
          }
        }
      }
    }
  };
  if (b.cg == 1) return loops(1);
  loops(b.cg);
}

// sums[(k * cg + c') * C_out + o * groups + gi] += sum over the len rows of
// grad_rows[r, o * output_stride + gi] * cols[r, k * C + gi * cg + c']: the block's weight gradient over a
// tile, transposed and output-major. cols: len x (points * C); grad_rows: the layer's output-major rows
// from the block's first group, rows grad_stride apart, an output output_stride (the layer's groups)
// after the one before.
template <typename T>
[[gnu::always_inline]] inline void group_loops_weight_gradient(const GroupBlock& b, int64_t len,
                                                               const T* grad_rows, int64_t grad_stride,
                                                               int64_t output_stride, const T* cols, T* sums) {
  const int64_t channels = b.channels(), outputs = b.outputs();
  const auto loops = [&](int64_t cg) __attribute__((always_inline)) {
    for (int64_t r = 0; r < len; ++r) {
      const T* grad_row = grad_rows + r * grad_stride;
      const T* col_row = cols + r * b.points * channels;
      for (int64_t k = 0; k < b.points; ++k) {
        for (int64_t c = 0; c < cg; ++c) {
          const T* __restrict__ a = col_row + k * channels + c;
          for (int64_t o = 0; o < b.m; ++o) {
            T* __restrict__ s = sums + (k * cg + c) * outputs + o * b.groups;
            const T* __restrict__ go = grad_row + o * output_stride;
            for (int64_t gi = 0; gi < b.groups; ++gi) s[gi] += go[gi] * a[gi * cg];
          }
        }
      }
    }
  };
  if (b.cg == 1) return loops(1);
  loops(b.cg);
}

}  // namespace rcm_fsad::cpu
