// The CPU backend's sampling: a tile of output pixels' columns (the bilinear samples of their kernel
// points, NHWC gathers shared by all channels of an offset group), and its backward, which scatters the
// columns' gradient into the input gradient and writes the offset and mask gradients; and the workers' NHWC
// copies of an input it cannot read in place (WorkerImages).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "../deform_conv2d_args.h"
#include "../kernels/deform_conv2d_math.cuh"
#include "hot_loop.h"
#include "layout_copies.h"
#include "work_split.h"

namespace rcm_fsad::cpu {

using kernels::DeformConvGeometry;
using kernels::FieldStrides;
using kernels::SamplePoint;

// Channels per inner step of the backward sums; fixed so that the lane loop vectorises.
constexpr int64_t kLanes = 8;

template <typename scalar_t>
struct Sampling {
  const DeformConvGeometry& g;
  const scalar_t* input;  // NHWC from image first_image on; null where the workers copy the images (WorkerImages)
  int64_t first_image;
  int64_t image_copy_bytes;  // what WorkerImages' copies take at most (or one image): image_copy_bytes()
  const scalar_t* offset;
  FieldStrides offset_strides;
  const scalar_t* mask;  // null without modulation
  FieldStrides mask_strides;
  const scalar_t* zeros;  // C zeros, read in place of a corner outside the image
  bool avx2_fma;          // which build of the hot loops runs (use_avx2_fma, asked once per op)
  // kernels::kernel_point of every kernel point, made once per op: its integer division per tap took
  // 11-14% of a forward with 8 to 16 offset groups.
  const kernels::KernelPoint* points;

  const scalar_t* image(int64_t n) const { return input + (n - first_image) * g.height * g.width * g.channels; }
};

// How a window's columns follow one another along a row. GroupMajor: conv group after conv group, each
// kernel point after kernel point (DeformConvGeometry::column_index's order for a whole row), so that
// a group's columns are one matrix for its GEMM. PointMajor: kernel point after kernel point, each with
// all the window's channels (group_loops.h's order), so that a sample's run of channels is as long as
// its offset group.
enum class ColumnLayout { GroupMajor, PointMajor };

// A window of the columns matrix's rows: kernel points [k_begin, k_end) of channels [c_begin, c_end),
// whose columns of one kernel point come in blocks of `block` consecutive channels: a conv group's
// (GroupMajor) or all of them (PointMajor).
struct ColumnWindow {
  int64_t k_begin, k_end, c_begin, c_end, block;

  // Kernel points [k_begin, k_end) of conv groups [group_begin, group_end).
  static ColumnWindow conv_groups(const DeformConvGeometry& g, int64_t group_begin, int64_t group_end,
                                  int64_t k_begin, int64_t k_end, ColumnLayout layout) {
    const int64_t cg = g.channels_per_group();
    return {k_begin, k_end, group_begin * cg, group_end * cg,
            layout == ColumnLayout::GroupMajor ? cg : (group_end - group_begin) * cg};
  }
  static ColumnWindow every_column(const DeformConvGeometry& g, ColumnLayout layout) {
    return conv_groups(g, 0, g.groups, 0, g.kernel_points(), layout);
  }

  int64_t width() const { return (k_end - k_begin) * (c_end - c_begin); }
  // Position of channel c of kernel point k in a row of the window: for a GroupMajor window of a whole
  // row, DeformConvGeometry::column_index. That one keeps its own form: computing it through a shared
  // function spilled deform_im2col_kernel's registers (tools/ptxas_report.py).
  int64_t index(int64_t c, int64_t k) const {
    const int64_t b = (c - c_begin) / block;
    return (b * (k_end - k_begin) + (k - k_begin)) * block + (c - c_begin - b * block);
  }
  // The end of c's block: channels [c, block_end(c)) of a kernel point have consecutive columns.
  int64_t block_end(int64_t c) const { return c_begin + ((c - c_begin) / block + 1) * block; }
};

// Output pixels whose samples the forward computes together, in loops along them that vectorise.
constexpr int64_t kSampleRows = 16;

// The samples of one offset group and kernel point at up to kSampleRows output pixels, as the forward
// blends them: each corner's pixel in its image where the value reads it (kernels::value_reads), else -1,
// and its kernels::masked_weight. 32-bit pixels, which vectorise on AVX2: sample_columns takes images of
// fewer than 2^31 pixels.
template <typename scalar_t>
struct ForwardSamples {
  int32_t pixel[4][kSampleRows];
  scalar_t weight[4][kSampleRows];
};

// A run of channels [c0, c1) of one offset group whose columns are consecutive, its first kernel point's
// from `column` of a row of the window and each next kernel point's a block further.
struct ChannelRun {
  int64_t c0, c1, column;
};

// The runs of each offset group in a window: one, unless the group spans blocks (PointMajor windows of
// several conv groups never split one; GroupMajor windows do where an offset group spans conv groups).
inline std::vector<std::vector<ChannelRun>> channel_runs(const DeformConvGeometry& g, const ColumnWindow& window) {
  const int64_t per_og = g.channels_per_offset_group();
  std::vector<std::vector<ChannelRun>> runs(g.offset_groups);
  for (int64_t og = window.c_begin / per_og; og * per_og < window.c_end; ++og) {
    const int64_t og_end = std::min((og + 1) * per_og, window.c_end);
    for (int64_t c0 = std::max(og * per_og, window.c_begin), c1; c0 < og_end; c0 = c1) {
      c1 = std::min(og_end, window.block_end(c0));
      runs[og].push_back({c0, c1, window.index(c0, window.k_begin)});
    }
  }
  return runs;
}

// The rows [r0, r0 + len) of a chunk: their images, where their offsets and masks start (channel 0), and
// the tap origins (kernels::tap_origin) of the window's kernel points, kSampleRows a kernel point (from
// kernel point 0: those outside the window unused).
template <typename scalar_t>
struct SampleRows {
  const scalar_t* image[kSampleRows];
  int64_t offset_at[kSampleRows];
  int64_t mask_at[kSampleRows];
  std::vector<scalar_t> origin_y, origin_x;

  explicit SampleRows(const DeformConvGeometry& g)
      : origin_y(g.kernel_points() * kSampleRows), origin_x(g.kernel_points() * kSampleRows) {}

  void load(const Sampling<scalar_t>& s, int64_t r0, int64_t len, int64_t k_begin, int64_t k_end) {
    for (int64_t j = 0; j < len; ++j) {
      const auto [n, oy, ox] = kernels::output_pixel(s.g, r0 + j);
      image[j] = s.image(n);
      offset_at[j] = s.offset_strides.at(n, 0, oy, ox);
      mask_at[j] = s.mask_strides.at(n, 0, oy, ox);
      for (int64_t k = k_begin; k < k_end; ++k) {
        const kernels::TapOrigin o = kernels::tap_origin(s.g, oy, ox, s.points[k]);
        origin_y[k * kSampleRows + j] = static_cast<scalar_t>(o.y);
        origin_x[k * kSampleRows + j] = static_cast<scalar_t>(o.x);
      }
    }
  }
};

// Asks the cache for the field values of the chunk after a chunk whose first row reads field[at], in a
// field of NCHW planes (w_stride 1): there a chunk's rows read a cache line or two of each of its
// channels, more streams at once than the hardware prefetchers follow (2 x 144 + 144 with 16 offset
// groups of a 3x3 kernel). Integer arithmetic, since past the last chunk the address is past the field.
template <typename scalar_t>
[[gnu::always_inline]] inline void prefetch_next_chunk(const scalar_t* field, int64_t at, int64_t w_stride) {
  if (w_stride != 1) return;
  const auto address = reinterpret_cast<std::uintptr_t>(field + at);
  __builtin_prefetch(reinterpret_cast<const void*>(address + kSampleRows * sizeof(scalar_t)));
  __builtin_prefetch(reinterpret_cast<const void*>(address + (2 * kSampleRows - 1) * sizeof(scalar_t)));
}

// The positions (kernels::sample_position) and modulations of offset group og's kernel point k at a
// chunk's rows, the flags as 32-bit integers, as wide as the 32-bit lanes they are computed in; and the
// image's size in the corners' 32-bit indices.
template <typename scalar_t>
struct SamplePositions {
  scalar_t y[kSampleRows], x[kSampleRows], m[kSampleRows];
  int32_t reachable[kSampleRows], on_border[kSampleRows];
  int32_t height, width;

  // In two loops: the fields' loads, which gather, then sample_position, which vectorises.
  [[gnu::always_inline]] SamplePositions(const Sampling<scalar_t>& s, int64_t og, int64_t k, int64_t len,
                                         const SampleRows<scalar_t>& rows) {
    const DeformConvGeometry& g = s.g;
    height = static_cast<int32_t>(g.height);
    width = static_cast<int32_t>(g.width);
    const scalar_t* origin_y = rows.origin_y.data() + k * kSampleRows;
    const scalar_t* origin_x = rows.origin_x.data() + k * kSampleRows;
    const int64_t dy_at = 2 * (og * g.kernel_points() + k) * s.offset_strides.c;
    const int64_t dx_at = dy_at + s.offset_strides.c;
    const int64_t m_at = (og * g.kernel_points() + k) * s.mask_strides.c;
    prefetch_next_chunk(s.offset, rows.offset_at[0] + dy_at, s.offset_strides.w);
    prefetch_next_chunk(s.offset, rows.offset_at[0] + dx_at, s.offset_strides.w);
    if (s.mask != nullptr) prefetch_next_chunk(s.mask, rows.mask_at[0] + m_at, s.mask_strides.w);
    for (int64_t j = 0; j < len; ++j) {
      y[j] = origin_y[j] + s.offset[rows.offset_at[j] + dy_at];
      x[j] = origin_x[j] + s.offset[rows.offset_at[j] + dx_at];
      m[j] = s.mask != nullptr ? s.mask[rows.mask_at[j] + m_at] : scalar_t(1);
    }
    for (int64_t j = 0; j < len; ++j) {
      const auto q = kernels::sample_position(y[j], x[j], g.height, g.width);
      y[j] = q.y;
      x[j] = q.x;
      reachable[j] = q.reachable;
      on_border[j] = q.on_border;
    }
  }

  // The sample at row j, for a loop along the rows apart from the constructor's (kernels::sample_point_at
  // says why).
  SamplePoint<scalar_t, int32_t> point(int64_t j) const {
    return kernels::sample_point_at<scalar_t, int32_t>({y[j], x[j], reachable[j] != 0, on_border[j] != 0}, height,
                                                       width);
  }
};

// f = the samples of offset group og and kernel point k at rows' first len rows: their positions, then
// their points and weights in a loop that vectorises.
template <typename scalar_t>
[[gnu::always_inline]] inline void forward_samples(const Sampling<scalar_t>& s, int64_t og, int64_t k, int64_t len,
                                                   const SampleRows<scalar_t>& rows, ForwardSamples<scalar_t>& f) {
  const SamplePositions<scalar_t> q(s, og, k, len, rows);
  for (int64_t j = 0; j < len; ++j) {
    const auto p = q.point(j);
    for (int i = 0; i < 4; ++i) {
      f.pixel[i][j] = kernels::value_reads(p, i) ? p.pixel[i] : -1;
      f.weight[i][j] = kernels::masked_weight(p, i, q.m[j]);
    }
  }
}

// cols[r - row_begin, :] = the window's columns of rows [row_begin, row_end), blended in scalar_t and
// stored as col_t (bfloat16 for the CPU's bfloat16 GEMMs, rounded to nearest even); runs: channel_runs of
// the window. The samples of kSampleRows rows at a time (forward_samples), then their blends, a row at a
// time. samples: a ForwardSamples for each of the window's kernel points.
template <typename scalar_t, typename col_t>
[[gnu::always_inline]] inline void sample_columns_body(const Sampling<scalar_t>& s, int64_t row_begin,
                                                       int64_t row_end, const ColumnWindow& window,
                                                       const std::vector<std::vector<ChannelRun>>& runs,
                                                       SampleRows<scalar_t>& rows, ForwardSamples<scalar_t>* samples,
                                                       col_t* cols) {
  const DeformConvGeometry& g = s.g;
  const int64_t per_og = g.channels_per_offset_group();
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kSampleRows) {
    const int64_t len = std::min(kSampleRows, row_end - r0);
    rows.load(s, r0, len, window.k_begin, window.k_end);
    for (int64_t og = window.c_begin / per_og; og * per_og < window.c_end; ++og) {
      for (int64_t k = window.k_begin; k < window.k_end; ++k) {
        forward_samples(s, og, k, len, rows, samples[k - window.k_begin]);
      }
      for (int64_t j = 0; j < len; ++j) {
        col_t* col_row = cols + (r0 + j - row_begin) * window.width();
        for (const ChannelRun& run : runs[og]) {
          const int64_t run_length = run.c1 - run.c0;
          for (int64_t k = window.k_begin; k < window.k_end; ++k) {
            const ForwardSamples<scalar_t>& f = samples[k - window.k_begin];
            const scalar_t* corner[4];
            scalar_t w[4];
            for (int i = 0; i < 4; ++i) {
              corner[i] = (f.pixel[i][j] >= 0 ? rows.image[j] + int64_t(f.pixel[i][j]) * g.channels : s.zeros) + run.c0;
              w[i] = f.weight[i][j];
            }
            col_t* __restrict__ dst = col_row + run.column + (k - window.k_begin) * window.block;
            const scalar_t* __restrict__ a = corner[0];
            const scalar_t* __restrict__ b = corner[1];
            const scalar_t* __restrict__ c = corner[2];
            const scalar_t* __restrict__ d = corner[3];
            for (int64_t i = 0; i < run_length; ++i) {
              dst[i] = static_cast<col_t>(kernels::masked_blend(w, a[i], b[i], c[i], d[i]));
            }
          }
        }
      }
    }
  }
}

// The samples of one offset group and kernel point at up to kSampleRows output pixels, as the backward
// takes them: each corner's pixel in its image where it is inside (SamplePoint::valid; the offset
// gradient reads it), else -1; where the input gradient reaches it (kernels::gradient_reaches), else -1;
// its bilinear and masked (kernels::masked_weight) weights; the fractions and the modulation.
template <typename scalar_t>
struct BackwardSamples {
  int32_t pixel[4][kSampleRows];
  int32_t target[4][kSampleRows];
  scalar_t weight[4][kSampleRows];
  scalar_t masked[4][kSampleRows];
  scalar_t ly[kSampleRows], lx[kSampleRows], m[kSampleRows];
  int32_t on_border[kSampleRows];

  // The sample at row j as kernels::coordinate_gradient and kernels::bilinear_blend take it.
  SamplePoint<scalar_t, int32_t> point(int64_t j) const {
    SamplePoint<scalar_t, int32_t> p;
    for (int i = 0; i < 4; ++i) {
      p.pixel[i] = pixel[i][j];
      p.valid[i] = pixel[i][j] >= 0;
      p.weight[i] = weight[i][j];
    }
    p.ly = ly[j];
    p.lx = lx[j];
    p.on_border = on_border[j] != 0;
    return p;
  }
};

// b = the samples of offset group og and kernel point k at rows' first len rows, as forward_samples.
template <typename scalar_t>
[[gnu::always_inline]] inline void backward_samples(const Sampling<scalar_t>& s, int64_t og, int64_t k, int64_t len,
                                                    const SampleRows<scalar_t>& rows, BackwardSamples<scalar_t>& b) {
  const SamplePositions<scalar_t> q(s, og, k, len, rows);
  for (int64_t j = 0; j < len; ++j) {
    const auto p = q.point(j);
    for (int i = 0; i < 4; ++i) {
      b.pixel[i][j] = p.valid[i] ? p.pixel[i] : -1;
      b.target[i][j] = kernels::gradient_reaches(p, i) ? p.pixel[i] : -1;
      b.weight[i][j] = p.weight[i];
      b.masked[i][j] = kernels::masked_weight(p, i, q.m[j]);
    }
    b.ly[j] = p.ly;
    b.lx[j] = p.lx;
    b.m[j] = q.m[j];
    b.on_border[j] = p.on_border;
  }
}

// One sample's corners as its backward reads and scatters them, each at its pixel's channel 0: the input's
// (s.zeros outside the image), the input gradient's, or a row of the sink where the gradient does not reach
// the corner (kernels::gradient_reaches); and the corners' masked weights.
template <typename scalar_t>
struct SampleCorners {
  const scalar_t* value[4];
  scalar_t* target[4];
  scalar_t w[4];
};

// A sample's sums over its channels, of the columns' gradient times the value's derivatives along y and x
// (before modulation, kernels::coordinate_gradient) and times the value (the mask's gradient).
template <typename scalar_t>
struct SampleSums {
  scalar_t dy, dx, value;
};

// Backward of one sample p over its offset group's channel runs: adds w[i] x the columns' gradient to
// corner i's target, channel by channel, writes the sample's columns with kWriteColumns, and returns its
// sums. grad_row and col_row: the rows of the columns' gradient and of the columns, each from its kernel
// point's block (a run's columns start ChannelRun::column further). lanes: the most lanes a run fills, past
// which the sums would add zeros.
template <bool kWriteColumns, typename scalar_t>
[[gnu::always_inline]] inline SampleSums<scalar_t> sample_backward(const SamplePoint<scalar_t, int32_t>& p,
                                                                    const SampleCorners<scalar_t>& corners,
                                                                    const std::vector<ChannelRun>& runs,
                                                                    const scalar_t* grad_row, scalar_t* col_row,
                                                                    int64_t lanes) {
  const scalar_t(&w)[4] = corners.w;
  scalar_t sum_dy[kLanes] = {}, sum_dx[kLanes] = {}, sum_value[kLanes] = {};
  for (const ChannelRun& channels : runs) {
    const int64_t c0 = channels.c0, c1 = channels.c1;
    const scalar_t* __restrict__ gcol = grad_row + channels.column - c0;
    scalar_t* __restrict__ col = kWriteColumns ? col_row + channels.column - c0 : nullptr;
    const scalar_t* __restrict__ v00 = corners.value[0];
    const scalar_t* __restrict__ v01 = corners.value[1];
    const scalar_t* __restrict__ v10 = corners.value[2];
    const scalar_t* __restrict__ v11 = corners.value[3];
    scalar_t* __restrict__ t00 = corners.target[0];
    scalar_t* __restrict__ t01 = corners.target[1];
    scalar_t* __restrict__ t10 = corners.target[2];
    scalar_t* __restrict__ t11 = corners.target[3];
    const auto run = [&](auto on_border) __attribute__((always_inline)) {
      const auto lane = [&](int64_t l, int64_t ch) __attribute__((always_inline)) {
        const scalar_t gc = gcol[ch];
        const auto d = kernels::coordinate_gradient(p, v00[ch], v01[ch], v10[ch], v11[ch]);
        sum_dy[l] += gc * d.dy;
        sum_dx[l] += gc * d.dx;
        // kernels::interpolate's value: 0 on the border, times gc there too (0 x inf = NaN, as in
        // torchvision's mask gradient).
        const scalar_t value =
            decltype(on_border)::value ? scalar_t(0) : kernels::bilinear_blend(p, v00[ch], v01[ch], v10[ch], v11[ch]);
        sum_value[l] += gc * value;
        if constexpr (kWriteColumns) {
          // sample_columns' value: 0 on the border, where it reads no corner.
          col[ch] = decltype(on_border)::value ? scalar_t(0)
                                               : kernels::masked_blend(w, v00[ch], v01[ch], v10[ch], v11[ch]);
        }
        t00[ch] += w[0] * gc;
        t01[ch] += w[1] * gc;
        t10[ch] += w[2] * gc;
        t11[ch] += w[3] * gc;
      };
      // Whole steps of kLanes channels, then at most one of kLanes / 2 (the whole run where an offset group
      // has 4 channels in float32), then the rest. `omp simd` (honoured under -fopenmp or -fopenmp-simd,
      // which setup.py and CMakeLists.txt add where the compiler takes one; without either, the same results
      // unvectorised) vectorises the steps: their lanes write distinct channels of four distinct targets and
      // sum into sums of their own.
      int64_t base = c0;
      for (; base + kLanes <= c1; base += kLanes) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) lane(l, base + l);
      }
      if (base + kLanes / 2 <= c1) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes / 2; ++l) lane(l, base + l);
        base += kLanes / 2;
      }
      for (int64_t l = 0; base + l < c1; ++l) lane(l, base + l);
    };
    // A loop for samples on the -1 border and one for the others, so that neither tests it per channel
    // (kernels::interpolate does): a branch in the loop keeps it from vectorising.
    if (p.on_border) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  }
  SampleSums<scalar_t> sums{0, 0, 0};
  for (int64_t l = 0; l < lanes; ++l) {
    sums.dy += sum_dy[l];
    sums.dx += sum_dx[l];
    sums.value += sum_value[l];
  }
  return sums;
}

// Backward of sample_columns for rows [row_begin, row_end) of one image, whose columns' gradient
// grad_cols has every column, laid out as `window` (ColumnWindow::every_column, in either layout):
// scatters into grad_image, that image's NHWC input gradient (the caller owns it, so no atomics), and
// writes the offset and mask gradients of every (row, offset group, kernel point). sink: 4 x C values, a
// row per corner, that absorb the scatter of corners the input gradient does not reach
// (kernels::gradient_reaches), so that the loop over a sample's channels has no branch; a row each keeps
// the four targets distinct, as their __restrict__ promises. With kWriteColumns it also writes the rows'
// columns to cols, laid out as grad_cols, as sample_columns would: it reads their corners anyway, and the
// weight gradient needs them. runs: channel_runs of the window. The samples of kSampleRows rows at a time
// (backward_samples), then each row's samples (sample_backward); samples: a BackwardSamples for each
// kernel point.
template <bool kWriteColumns, typename scalar_t>
[[gnu::always_inline]] inline void sample_columns_backward_body(
    const Sampling<scalar_t>& s, int64_t row_begin, int64_t row_end, const ColumnWindow& window,
    const std::vector<std::vector<ChannelRun>>& runs, SampleRows<scalar_t>& rows, BackwardSamples<scalar_t>* samples,
    const scalar_t* grad_cols, scalar_t* cols, scalar_t* grad_image, scalar_t* sink, scalar_t* grad_offset,
    FieldStrides grad_offset_strides, scalar_t* grad_mask, FieldStrides grad_mask_strides) {
  const DeformConvGeometry& g = s.g;
  int64_t lanes = 0;
  for (const auto& og_runs : runs) {
    for (const ChannelRun& run : og_runs) lanes = std::max(lanes, std::min(kLanes, run.c1 - run.c0));
  }
  for (int64_t r0 = row_begin; r0 < row_end; r0 += kSampleRows) {
    const int64_t len = std::min(kSampleRows, row_end - r0);
    rows.load(s, r0, len, 0, g.kernel_points());
    for (int64_t og = 0; og < g.offset_groups; ++og) {
      for (int64_t k = 0; k < g.kernel_points(); ++k) backward_samples(s, og, k, len, rows, samples[k]);
      for (int64_t j = 0; j < len; ++j) {
        const auto [n, oy, ox] = kernels::output_pixel(g, r0 + j);
        const int64_t row_at = (r0 + j - row_begin) * window.width();
        for (int64_t k = 0; k < g.kernel_points(); ++k) {
          const BackwardSamples<scalar_t>& b = samples[k];
          SampleCorners<scalar_t> corners;
          for (int i = 0; i < 4; ++i) {
            corners.value[i] = b.pixel[i][j] >= 0 ? rows.image[j] + int64_t(b.pixel[i][j]) * g.channels : s.zeros;
            corners.target[i] =
                b.target[i][j] >= 0 ? grad_image + int64_t(b.target[i][j]) * g.channels : sink + i * g.channels;
            corners.w[i] = b.masked[i][j];
          }
          const int64_t block_at = row_at + (k - window.k_begin) * window.block;
          const SampleSums<scalar_t> sums = sample_backward<kWriteColumns>(
              b.point(j), corners, runs[og], grad_cols + block_at, kWriteColumns ? cols + block_at : nullptr, lanes);
          const int64_t ch = 2 * (og * g.kernel_points() + k);
          grad_offset[grad_offset_strides.at(n, ch, oy, ox)] = b.m[j] * sums.dy;
          grad_offset[grad_offset_strides.at(n, ch + 1, oy, ox)] = b.m[j] * sums.dx;
          if (grad_mask != nullptr) {
            grad_mask[grad_mask_strides.at(n, og * g.kernel_points() + k, oy, ox)] = sums.value;
          }
        }
      }
    }
  }
}

template <typename scalar_t, typename col_t>
void sample_columns(const Sampling<scalar_t>& s, int64_t row_begin, int64_t row_end, const ColumnWindow& window,
                    col_t* cols) {
  const std::vector<std::vector<ChannelRun>> runs = channel_runs(s.g, window);
  SampleRows<scalar_t> rows(s.g);
  std::vector<ForwardSamples<scalar_t>> samples(window.k_end - window.k_begin);
  run_hot_loop(s.avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
    sample_columns_body(s, row_begin, row_end, window, runs, rows, samples.data(), cols);
  });
}

// The images a worker samples: the input itself where the batch's Sampling reads it in place (make_sampling),
// else NHWC copies of runs of its images, made as the worker's rows reach them, in a buffer of at most
// s.image_copy_bytes or one image. An NHWC copy of the whole batch, made up front, was mapped afresh by glibc
// on each call along with the output (N=8, 64 channels, 56x56: 6.4 MB each, about 3000 page faults a call
// and a third of the forward's time on 2 threads), where an image's copy (800 kB) stays in the worker's
// heap. Runs of small images keep the copies few: an image a copy took the forward of 1024 images of 4x4
// pixels and 4 channels from 3.0 to 4.3 ms (one thread), runs of them 3.1-3.4 ms.
template <typename scalar_t>
class WorkerImages {
 public:
  // s: the batch's sampling; input: (N, C, H, W) in any dtype, its images' pixels evenly spaced
  // (evenly_spaced), as make_sampling took it.
  WorkerImages(const Sampling<scalar_t>& s, const at::Tensor& input) : sampling_(s), held_end_(s.g.batch) {
    if (s.input != nullptr) return;
    const DeformConvGeometry& g = s.g;
    const int64_t image_bytes = g.height * g.width * g.channels * int64_t(sizeof(scalar_t));
    const int64_t images = std::clamp<int64_t>(s.image_copy_bytes / std::max<int64_t>(1, image_bytes), 1, g.batch);
    TORCH_INTERNAL_ASSERT(pixel_stride(input).has_value(), "WorkerImages takes evenly spaced pixels");
    input_ = input;
    pixel_stride_ = *pixel_stride(input);
    for (int64_t c = 0; c < g.channels; ++c) channels_.push_back(c);
    buffer_ = at::empty({images, g.height, g.width, g.channels},
                        input.options().dtype(c10::CppTypeToScalarType<scalar_t>::value));
    sampling_.input = buffer_.const_data_ptr<scalar_t>();
    held_end_ = 0;
  }

  const DeformConvGeometry& geometry() const { return sampling_.g; }

  // The sampling of images [first, held_end()), for a held_end() past `first`: where the images are copied
  // and the buffer does not hold image `first`, it copies as many of images [first, last] as it holds.
  const Sampling<scalar_t>& holding(int64_t first, int64_t last) {
    if (buffer_.defined() && (first < sampling_.first_image || first >= held_end_)) {
      const int64_t count = std::min(buffer_.size(0), last + 1 - first);
      const int64_t pixels = sampling_.g.height * sampling_.g.width;
      for (int64_t i = 0; i < count; ++i) {
        gather_image_rows(input_, first + i, 0, pixels, pixel_stride_, channels_.data(),
                          buffer_.mutable_data_ptr<scalar_t>() + i * pixels * sampling_.g.channels,
                          sampling_.avx2_fma);
      }
      sampling_.first_image = first;
      held_end_ = first + count;
    }
    return sampling_;
  }
  int64_t held_end() const { return held_end_; }

 private:
  Sampling<scalar_t> sampling_;
  int64_t held_end_;   // the images the sampling holds end here (the batch's end where it reads the input)
  at::Tensor input_;               // (N, C, H, W), its images' pixels pixel_stride_ apart
  int64_t pixel_stride_ = 0;
  std::vector<int64_t> channels_;  // 0, ..., C - 1: gather_rows' columns
  at::Tensor buffer_;              // (images, H, W, C), where the images are copied
};

// sample_columns of rows [row_begin, row_end) of any images, sampled from `images`.
template <typename scalar_t, typename col_t>
void sample_columns(WorkerImages<scalar_t>& images, int64_t row_begin, int64_t row_end, const ColumnWindow& window,
                    col_t* cols) {
  const int64_t out_pixels = images.geometry().out_pixels();
  for (int64_t r0 = row_begin, r1; r0 < row_end; r0 = r1) {
    const Sampling<scalar_t>& s = images.holding(r0 / out_pixels, (row_end - 1) / out_pixels);
    r1 = std::min(row_end, images.held_end() * out_pixels);
    sample_columns(s, r0, r1, window, cols + (r0 - row_begin) * window.width());
  }
}

// sample_columns_backward_body, writing the columns where cols is not null.
template <typename scalar_t>
void sample_columns_backward(const Sampling<scalar_t>& s, int64_t row_begin, int64_t row_end,
                             const ColumnWindow& window, const scalar_t* grad_cols, scalar_t* cols,
                             scalar_t* grad_image, scalar_t* sink, scalar_t* grad_offset,
                             FieldStrides grad_offset_strides, scalar_t* grad_mask, FieldStrides grad_mask_strides) {
  const std::vector<std::vector<ChannelRun>> runs = channel_runs(s.g, window);
  SampleRows<scalar_t> rows(s.g);
  std::vector<BackwardSamples<scalar_t>> samples(s.g.kernel_points());
  run_hot_loop(s.avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
    if (cols != nullptr) {
      sample_columns_backward_body<true>(s, row_begin, row_end, window, runs, rows, samples.data(), grad_cols, cols,
                                         grad_image, sink, grad_offset, grad_offset_strides, grad_mask,
                                         grad_mask_strides);
    } else {
      sample_columns_backward_body<false>(s, row_begin, row_end, window, runs, rows, samples.data(), grad_cols,
                                          cols, grad_image, sink, grad_offset, grad_offset_strides, grad_mask,
                                          grad_mask_strides);
    }
  });
}

// The sampling of a batch whose offset, mask and zeros are scalar_t. It reads `input` in place where that is
// NHWC and scalar_t; else its input is null, and each worker samples copies of the images (WorkerImages).
template <typename scalar_t>
Sampling<scalar_t> make_sampling(const DeformConvGeometry& g, const at::Tensor& input,
                                 const at::Tensor& offset, const std::optional<at::Tensor>& mask,
                                 const at::Tensor& zeros, const std::vector<kernels::KernelPoint>& points) {
  const bool in_place = input.scalar_type() == c10::CppTypeToScalarType<scalar_t>::value &&
                        input.is_contiguous(at::MemoryFormat::ChannelsLast);
  return {g,
          in_place ? input.const_data_ptr<scalar_t>() : nullptr,
          0,
          image_copy_bytes(),
          offset.const_data_ptr<scalar_t>(),
          field_strides(offset),
          mask.has_value() ? mask->const_data_ptr<scalar_t>() : nullptr,
          mask.has_value() ? field_strides(*mask) : FieldStrides{0, 0, 0, 0},
          zeros.const_data_ptr<scalar_t>(),
          use_avx2_fma(),
          points.data()};
}

inline std::vector<kernels::KernelPoint> kernel_points(const DeformConvGeometry& g) {
  std::vector<kernels::KernelPoint> points;
  for (int64_t k = 0; k < g.kernel_points(); ++k) points.push_back(kernels::kernel_point(g, k));
  return points;
}

}  // namespace rcm_fsad::cpu
