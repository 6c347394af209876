// The products of a grouped layer's columns with its weights as plain loops over the conv groups,
// for layers whose groups are too small for a GEMM call each: a depthwise 3x3 layer's group is a
// 9 x 1 matrix, and its forward spent as long in the calls (one per group and tile of rows) and their
// views as in its sampling. Torch-free: raw pointers, one tile of rows at a time.
//
// The columns these loops read and write are point-major: a row holds kernel point after kernel point,
// each with all the block's channels in order (ColumnWindow's PointMajor layout), so that the sampling
// fills and reads them in runs as long as an offset group. Conv group gi's channel c' at point k is
// column k * C + gi * cg + c' of a row. The innermost loops run along the groups; each function runs
// them once with literal unit strides where a group has one input and one output channel (a depthwise
// layer's), where they are contiguous and vectorise, and once with the block's strides elsewhere.
#pragma once

#include <cstdint>

namespace rcm_fsad {

// The conv groups a loop covers: `groups` groups of `cg` input channels and `m` output channels each,
// over `points` kernel points.
struct GroupBlock {
  int64_t groups;
  int64_t cg;
  int64_t m;
  int64_t points;

  int64_t channels() const { return groups * cg; }
  int64_t outputs() const { return groups * m; }
  bool depthwise() const { return cg == 1 && m == 1; }
};

// out[r, oc] = bias[oc] (0 without bias) + sum over k, c' of cols[r, k * C + gi * cg + c'] *
// weight_t[(k * cg + c') * C_out + oc], for the len rows of a tile and oc = gi * m + o.
// cols: len x (points * C). weight_t: (points * cg) x C_out, the weight matrix transposed, so the block
// is the whole layer (C_out = b.outputs()). out: rows out_stride apart.
template <typename T>
[[gnu::always_inline]] inline void group_loops_forward(const GroupBlock& b, int64_t len, const T* cols,
                                                       const T* weight_t, const T* bias, T* out,
                                                       int64_t out_stride) {
  const int64_t channels = b.channels(), outputs = b.outputs();
  const auto loops = [&](int64_t cg, int64_t m) __attribute__((always_inline)) {
    for (int64_t r = 0; r < len; ++r) {
      T* __restrict__ out_row = out + r * out_stride;
      const T* col_row = cols + r * b.points * channels;
      for (int64_t oc = 0; oc < outputs; ++oc) out_row[oc] = bias != nullptr ? bias[oc] : T(0);
      for (int64_t k = 0; k < b.points; ++k) {
        for (int64_t c = 0; c < cg; ++c) {
          const T* __restrict__ a = col_row + k * channels + c;
          const T* __restrict__ w = weight_t + (k * cg + c) * outputs;
          for (int64_t o = 0; o < m; ++o) {
            for (int64_t gi = 0; gi < b.groups; ++gi) out_row[gi * m + o] += a[gi * cg] * w[gi * m + o];
          }
        }
      }
    }
  };
  if (b.depthwise()) return loops(1, 1);
  loops(b.cg, b.m);
}

// grad_cols[r, k * C + gi * cg + c'] = sum over o of grad_rows[r, gi * m + o] *
// weight_t[(k * cg + c') * C_out + gi * m + o]: the columns' gradient, len x (points * C). As in
// group_loops_forward, the block is the whole layer. grad_rows: rows grad_stride apart.
template <typename T>
[[gnu::always_inline]] inline void group_loops_columns_gradient(const GroupBlock& b, int64_t len,
                                                                const T* grad_rows, int64_t grad_stride,
                                                                const T* weight_t, T* grad_cols) {
  const int64_t channels = b.channels(), outputs = b.outputs();
  const auto loops = [&](int64_t cg, int64_t m) __attribute__((always_inline)) {
    for (int64_t r = 0; r < len; ++r) {
      const T* __restrict__ grad_row = grad_rows + r * grad_stride;
      T* gc_row = grad_cols + r * b.points * channels;
      for (int64_t k = 0; k < b.points; ++k) {
        for (int64_t c = 0; c < cg; ++c) {
          T* __restrict__ gc = gc_row + k * channels + c;
          const T* __restrict__ w = weight_t + (k * cg + c) * outputs;
          for (int64_t gi = 0; gi < b.groups; ++gi) gc[gi * cg] = grad_row[gi * m] * w[gi * m];
          for (int64_t o = 1; o < m; ++o) {
            for (int64_t gi = 0; gi < b.groups; ++gi) gc[gi * cg] += grad_row[gi * m + o] * w[gi * m + o];
          }
        }
      }
    }
  };
  if (b.depthwise()) return loops(1, 1);
  loops(b.cg, b.m);
}

// sums[(k * cg + c') * C_out + oc] += sum over the len rows of grad_rows[r, oc] * cols[r, k * C + gi * cg + c']
// for oc = gi * m + o: the block's weight gradient over a tile, transposed. cols: len x (points * C);
// grad_rows: from the block's first output channel, rows grad_stride apart.
template <typename T>
[[gnu::always_inline]] inline void group_loops_weight_gradient(const GroupBlock& b, int64_t len,
                                                               const T* grad_rows, int64_t grad_stride,
                                                               const T* cols, T* sums) {
  const int64_t channels = b.channels(), outputs = b.outputs();
  const auto loops = [&](int64_t cg, int64_t m) __attribute__((always_inline)) {
    for (int64_t r = 0; r < len; ++r) {
      const T* __restrict__ grad_row = grad_rows + r * grad_stride;
      const T* col_row = cols + r * b.points * channels;
      for (int64_t k = 0; k < b.points; ++k) {
        for (int64_t c = 0; c < cg; ++c) {
          const T* __restrict__ a = col_row + k * channels + c;
          T* __restrict__ s = sums + (k * cg + c) * outputs;
          for (int64_t o = 0; o < m; ++o) {
            for (int64_t gi = 0; gi < b.groups; ++gi) s[gi * m + o] += grad_row[gi * m + o] * a[gi * cg];
          }
        }
      }
    }
  };
  if (b.depthwise()) return loops(1, 1);
  loops(b.cg, b.m);
}

}  // namespace rcm_fsad
