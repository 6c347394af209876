// CPU backend of deform_conv2d: tiles of output pixels are sampled into a cache-sized columns
// tile (NHWC gathers shared by all channels of an offset group) and multiplied by the weight
// right away, so no full columns buffer is ever materialised.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../deform_conv2d_args.h"
#include "../kernels/deform_conv2d_math.cuh"
#include "cpu_capability.h"
#include "group_loops.h"

namespace rcm_fsad {
namespace {

using kernels::DeformConvGeometry;
using kernels::FieldStrides;
using kernels::SamplePoint;

// Output pixels per tile: a 256 x (C*K) columns tile of a 3x3, 256-channel layer is 2.4 MB in fp32.
constexpr int64_t kRowTile = 256;

// Output pixels per forward tile for `rows` rows on `threads` threads: at most kRowTile, and as many
// tiles as the fewest rounds of kRowTile tiles on every thread (7 tiles of 256 on 2 threads become 8
// of 196, so that no thread waits a whole tile for the other).
int64_t forward_tile_rows(int64_t rows, int64_t threads) {
  const int64_t tiles = (rows + kRowTile - 1) / kRowTile;
  const int64_t rounds = (tiles + threads - 1) / threads;
  return std::max<int64_t>(1, (rows + rounds * threads - 1) / (rounds * threads));
}

// Copies that let threads split a sum (the input gradient's, one per band of rows; the weight
// gradient's, one per range of rows) take at most this many bytes beyond the first, each kind:
// RCM_FSAD_CPU_COPY_BYTES (a number of bytes, 0 for no copies), else 256 MiB. Read once per backward.
int64_t split_copy_bytes() {
  const char* text = std::getenv("RCM_FSAD_CPU_COPY_BYTES");
  if (text == nullptr) return int64_t(256) << 20;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  // Digits only: strtoll would also take leading spaces and a sign.
  TORCH_CHECK(std::isdigit(static_cast<unsigned char>(*text)) && *end == '\0',
              "RCM_FSAD_CPU_COPY_BYTES must be a number of bytes (0 or more), got '", text, "'");
  return std::min<int64_t>(value, int64_t(1) << 60);  // beyond any memory; no overflow in the counts below
}

// The share of `threads` threads' time that `tasks` equal tasks keep busy.
double busy_share(int64_t tasks, int64_t threads) {
  const int64_t rounds = (tasks + threads - 1) / threads;
  return double(tasks) / double(rounds * threads);
}

// The fewest splits of each of `units` units of work, at most `most`, that give every one of `threads`
// threads at least 7/8 of an even share of the units x splits tasks; else the split with the largest.
int64_t fewest_splits(int64_t units, int64_t threads, int64_t most) {
  int64_t best = 1;
  double best_share = 0;
  for (int64_t splits = 1; splits <= std::max<int64_t>(1, most); ++splits) {
    const double share = busy_share(units * splits, threads);
    if (share >= 0.875) return splits;
    if (share > best_share) best = splits, best_share = share;
  }
  return best;
}

// The input gradient's tasks are (image, band of its output rows); each band scatters into a private
// copy of the input gradient, and the copies are summed at the end. Batch 1 on 2 threads: 2 bands;
// batch 8: 1, so no copy.
int64_t backward_bands(int64_t batch, int64_t out_pixels, int64_t threads, int64_t grad_input_bytes,
                       int64_t copy_bytes) {
  if (batch <= 0) return 1;
  const int64_t affordable = copy_bytes / std::max<int64_t>(1, grad_input_bytes) + 1;
  return fewest_splits(batch, threads, std::min({threads, affordable, out_pixels}));
}

// The weight gradient's tasks: blocks of columns times `row_ranges` ranges of the rows, each range adding
// into a copy of its own. A block is `conv_groups` consecutive conv groups' columns, or, where that is
// one group, a run of its kernel points (`kernel_point_runs` a group): a ColumnWindow either way. A block
// of whole offset groups samples each point once, as the forward does; a block inside an offset group
// repeats its points' sampling (offsets, weights, corners) once for each block, which costs most where a
// conv group has few channels (a depthwise layer's backward took 1.65x as long with a block a conv group,
// on 2 threads). So blocks of whole offset groups, split to keep the threads busiest with the copies that
// fit in split_copy_bytes(), with the fewest runs, then the fewest copies (whole conv groups sample a row
// at a time, as the forward does: a kernel point a block took 4-8% longer at 64 channels on 2 threads);
// single conv groups with their kernel-point runs only where those keep fewer than 7/8 of the threads
// busy and single groups keep more. 2 threads: 1 run, 2 ranges; 64 threads and a 512-channel 3x3 layer in
// float32: 3 runs, 21 ranges (189 MiB, where a copy per thread took 576 MiB).
struct WeightGradientSplit {
  int64_t conv_groups;  // a block's; 1 wherever kernel_point_runs > 1
  int64_t kernel_point_runs;
  int64_t row_ranges;
  double share;  // of the threads' time busy (busy_share)
};

// The busiest split into blocks of `conv_groups` conv groups (kernel-point runs where that is 1) and at
// most `most_ranges` ranges.
WeightGradientSplit busiest_split(const DeformConvGeometry& g, int64_t conv_groups, int64_t threads,
                                  int64_t most_ranges) {
  WeightGradientSplit best{conv_groups, 1, 1, 0.0};
  const int64_t most_runs = conv_groups == 1 ? g.kernel_points() : 1;
  for (int64_t runs = 1; runs <= most_runs; ++runs) {
    if (g.kernel_points() % runs != 0) continue;
    for (int64_t ranges = 1; ranges <= most_ranges; ++ranges) {
      const double share = busy_share(g.groups / conv_groups * runs * ranges, threads);
      if (share > best.share) best = {conv_groups, runs, ranges, share};
    }
  }
  return best;
}

WeightGradientSplit weight_gradient_split(const DeformConvGeometry& g, int64_t rows, int64_t threads,
                                          int64_t grad_weight_bytes, int64_t copy_bytes) {
  const int64_t affordable = copy_bytes / std::max<int64_t>(1, grad_weight_bytes) + 1;
  const int64_t most_ranges = std::max<int64_t>(1, std::min({threads, affordable, rows}));
  // The fewest consecutive conv groups whose channels are whole offset groups.
  const int64_t whole = g.groups / std::gcd(g.groups, g.offset_groups);
  const WeightGradientSplit blocks_of_whole = busiest_split(g, whole, threads, most_ranges);
  if (whole == 1 || blocks_of_whole.share >= 0.875) return blocks_of_whole;
  const WeightGradientSplit single_groups = busiest_split(g, 1, threads, most_ranges);
  return single_groups.share > blocks_of_whole.share ? single_groups : blocks_of_whole;
}

// Whether a layer's products with its weights go through group_loops.h instead of a GEMM per conv group
// and tile of rows: where it has several groups, each of at most kGroupLoopsMaxProducts multiply-adds a
// row (kernel points x input channels x output channels), or of at most kGroupLoopsMaxChannels input
// channels and kGroupLoopsMaxProductsFewChannels products (the loops vectorise along the groups, and read
// a group's columns cg apart, so many channels a group leave them few groups to run along). Measured
// on 2 threads (N=8, 3x3, 64 channels at 56x56 and 256 at 14x14, forward and forward+backward, each
// way on the same inputs), the loops' time over the GEMMs':
//   - up to 72 products: 0.15-0.90x (a depthwise forward 0.16x and 0.06x);
//   - 4 channels a group or fewer, 144 to 288 products: 0.31-1.02x (the most, 2 channels x 16 outputs);
//   - 8 channels a group: 0.58-1.09x at 144 products, 0.72-1.33x at 216, 0.86-1.52x at 288;
//     16: 0.84-2.0x at 144, 0.93-2.3x at 288; 32: 1.4-3.0x at 288;
//   - beyond 288: 0.93-3.2x.
constexpr int64_t kGroupLoopsMaxProducts = 72;
constexpr int64_t kGroupLoopsMaxChannels = 4;
constexpr int64_t kGroupLoopsMaxProductsFewChannels = 288;
bool use_group_loops(const DeformConvGeometry& g) {
  const int64_t products = g.kernel_points() * g.channels_per_group() * (g.out_channels / g.groups);
  return g.groups > 1 && (products <= kGroupLoopsMaxProducts ||
                          (g.channels_per_group() <= kGroupLoopsMaxChannels &&
                           products <= kGroupLoopsMaxProductsFewChannels));
}

GroupBlock group_block(const DeformConvGeometry& g) {
  return {g.groups, g.channels_per_group(), g.out_channels / g.groups, g.kernel_points()};
}

// The weight matrix (C_out x K * C_g) as group_loops.h takes it: transposed, its output channels in
// output-major order (GroupBlock::output_major).
at::Tensor weight_output_major(const at::Tensor& wmat, const DeformConvGeometry& g) {
  return wmat.view({g.groups, g.out_channels / g.groups, wmat.size(1)})
      .permute({2, 1, 0})
      .contiguous()
      .view({wmat.size(1), g.out_channels});
}

// Channels per inner step of the backward sums; fixed so that the lane loop vectorises.
constexpr int64_t kLanes = 8;

template <typename scalar_t>
struct Sampling {
  const DeformConvGeometry& g;
  const scalar_t* input;  // NHWC
  const scalar_t* offset;
  FieldStrides offset_strides;
  const scalar_t* mask;  // null without modulation
  FieldStrides mask_strides;
  const scalar_t* zeros;  // C zeros, read in place of a corner outside the image
  bool avx2_fma;          // which build of the hot loops runs (use_avx2_fma, asked once per op)
  // kernels::kernel_point of every kernel point, made once per op: its integer division per tap took
  // 11-14% of a forward with 8 to 16 offset groups.
  const kernels::KernelPoint* points;

  const scalar_t* image(int64_t n) const { return input + n * g.height * g.width * g.channels; }

  // The sample of kernel point k of offset group og at output pixel (oy, ox) of image n: its
  // bilinear point, its modulation, the four corners' NHWC rows (the zeros row for a corner outside
  // the image), the same for the value (the zeros row too for a corner the value does not read:
  // kernels::value_reads) and their weights times the modulation (kernels::masked_weight).
  struct Tap {
    SamplePoint<scalar_t> point;
    scalar_t m;
    const scalar_t* corner[4];
    const scalar_t* value_corner[4];
    scalar_t weight[4];
  };
  Tap tap(int64_t n, int64_t og, int64_t k, int64_t oy, int64_t ox) const {
    Tap t;
    t.point = kernels::displaced_sample_point<scalar_t>(
        g, points[k], oy, ox, kernels::sample_offset<scalar_t>(g, offset, offset_strides, n, og, k, oy, ox));
    t.m = kernels::modulation<scalar_t>(g, mask, mask_strides, n, og, k, oy, ox);
    for (int i = 0; i < 4; ++i) {
      t.corner[i] = t.point.valid[i] ? image(n) + t.point.pixel[i] * g.channels : zeros;
      t.value_corner[i] = kernels::value_reads(t.point, i) ? t.corner[i] : zeros;
      t.weight[i] = kernels::masked_weight(t.point, i, t.m);
    }
    return t;
  }
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

// cols[r - row_begin, :] = the window's columns of rows [row_begin, row_end).
template <typename scalar_t>
[[gnu::always_inline]] inline void sample_columns_body(const Sampling<scalar_t>& s, int64_t row_begin,
                                                       int64_t row_end, const ColumnWindow& window,
                                                       scalar_t* cols) {
  const DeformConvGeometry& g = s.g;
  const int64_t per_og = g.channels_per_offset_group();
  for (int64_t r = row_begin; r < row_end; ++r) {
    const auto [n, oy, ox] = kernels::output_pixel(g, r);
    scalar_t* col_row = cols + (r - row_begin) * window.width();
    for (int64_t og = window.c_begin / per_og; og * per_og < window.c_end; ++og) {
      const int64_t og_end = std::min((og + 1) * per_og, window.c_end);
      for (int64_t k = window.k_begin; k < window.k_end; ++k) {
        const auto t = s.tap(n, og, k, oy, ox);
        const auto& corner = t.value_corner;
        const auto& w = t.weight;
        // A run ends at its offset group's end or its block's, neither past the window's.
        for (int64_t c0 = std::max(og * per_og, window.c_begin), c1; c0 < og_end; c0 = c1) {
          c1 = std::min(og_end, window.block_end(c0));
          scalar_t* __restrict__ dst = col_row + window.index(c0, k);
          const scalar_t* __restrict__ a = corner[0] + c0;
          const scalar_t* __restrict__ b = corner[1] + c0;
          const scalar_t* __restrict__ c = corner[2] + c0;
          const scalar_t* __restrict__ d = corner[3] + c0;
          for (int64_t i = 0; i < c1 - c0; ++i) {
            dst[i] = w[0] * a[i] + w[1] * b[i] + w[2] * c[i] + w[3] * d[i];
          }
        }
      }
    }
  }
}

// Backward of sample_columns for rows [row_begin, row_end) of one image, whose columns' gradient
// grad_cols has every column, laid out as `window` (ColumnWindow::every_column, in either layout):
// scatters into that image's NHWC grad_input (the caller owns it, so no atomics) and writes the offset
// and mask gradients of every (row, offset group, kernel point). sink: 4 x C values, a row per corner,
// that absorb the scatter of corners the input gradient does not reach (kernels::gradient_reaches), so
// that the loop over a sample's channels has no branch; a row each keeps the four targets distinct, as
// their __restrict__ promises.
template <typename scalar_t>
[[gnu::always_inline]] inline void sample_columns_backward_body(
    const Sampling<scalar_t>& s, int64_t row_begin, int64_t row_end, const ColumnWindow& window,
    const scalar_t* grad_cols, scalar_t* grad_input, scalar_t* sink, scalar_t* grad_offset,
    FieldStrides grad_offset_strides, scalar_t* grad_mask, FieldStrides grad_mask_strides) {
  const DeformConvGeometry& g = s.g;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const auto [n, oy, ox] = kernels::output_pixel(g, r);
    scalar_t* grad_image = grad_input + n * g.height * g.width * g.channels;
    const scalar_t* grad_row = grad_cols + (r - row_begin) * window.width();
    for (int64_t og = 0; og < g.offset_groups; ++og) {
      for (int64_t k = 0; k < g.kernel_points(); ++k) {
        const auto t = s.tap(n, og, k, oy, ox);
        const SamplePoint<scalar_t>& p = t.point;
        const scalar_t m = t.m;
        const auto& corner = t.corner;
        const auto& w = t.weight;
        scalar_t* target[4];
        for (int i = 0; i < 4; ++i) {
          target[i] = kernels::gradient_reaches(p, i) ? grad_image + p.pixel[i] * g.channels : sink + i * g.channels;
        }
        scalar_t sum_dy[kLanes] = {}, sum_dx[kLanes] = {}, sum_value[kLanes] = {};
        const int64_t og_end = (og + 1) * g.channels_per_offset_group();
        for (int64_t c0 = og * g.channels_per_offset_group(), c1; c0 < og_end; c0 = c1) {
          c1 = std::min(og_end, window.block_end(c0));
          const scalar_t* __restrict__ gcol = grad_row + window.index(c0, k) - c0;
          const scalar_t* __restrict__ v00 = corner[0];
          const scalar_t* __restrict__ v01 = corner[1];
          const scalar_t* __restrict__ v10 = corner[2];
          const scalar_t* __restrict__ v11 = corner[3];
          scalar_t* __restrict__ t00 = target[0];
          scalar_t* __restrict__ t01 = target[1];
          scalar_t* __restrict__ t10 = target[2];
          scalar_t* __restrict__ t11 = target[3];
          const auto run = [&](auto on_border) __attribute__((always_inline)) {
            const auto lane = [&](int64_t l, int64_t ch) __attribute__((always_inline)) {
              const scalar_t gc = gcol[ch];
              const auto d = kernels::coordinate_gradient(p, v00[ch], v01[ch], v10[ch], v11[ch]);
              sum_dy[l] += gc * d.dy;
              sum_dx[l] += gc * d.dx;
              // kernels::interpolate's value: 0 on the border, times gc there too (0 x inf = NaN, as in
              // torchvision's mask gradient).
              const scalar_t value = decltype(on_border)::value
                                         ? scalar_t(0)
                                         : kernels::bilinear_blend(p, v00[ch], v01[ch], v10[ch], v11[ch]);
              sum_value[l] += gc * value;
              t00[ch] += w[0] * gc;
              t01[ch] += w[1] * gc;
              t10[ch] += w[2] * gc;
              t11[ch] += w[3] * gc;
            };
            // Whole steps of kLanes channels, then the rest. `omp simd` (honoured under -fopenmp, which
            // setup.py and CMakeLists.txt add where the compiler has it; without, the same results
            // unvectorised) vectorises the steps: their lanes write distinct channels of four distinct
            // targets and sum into sums of their own.
            int64_t base = c0;
            for (; base + kLanes <= c1; base += kLanes) {
#pragma omp simd
              for (int64_t l = 0; l < kLanes; ++l) lane(l, base + l);
            }
            for (int64_t l = 0; base + l < c1; ++l) lane(l, base + l);
          };
          // A loop for samples on the -1 border and one for the others, so that neither tests it per
          // channel (kernels::interpolate does): a branch in the loop keeps it from vectorising.
          if (p.on_border) {
            run(std::true_type{});
          } else {
            run(std::false_type{});
          }
        }
        scalar_t dy = 0, dx = 0, value = 0;
        for (int64_t l = 0; l < kLanes; ++l) {
          dy += sum_dy[l];
          dx += sum_dx[l];
          value += sum_value[l];
        }
        const int64_t ch = 2 * (og * g.kernel_points() + k);
        grad_offset[grad_offset_strides.at(n, ch, oy, ox)] = m * dy;
        grad_offset[grad_offset_strides.at(n, ch + 1, oy, ox)] = m * dx;
        if (grad_mask != nullptr) {
          grad_mask[grad_mask_strides.at(n, og * g.kernel_points() + k, oy, ox)] = value;
        }
      }
    }
  }
}

// The hot loops (the sampling, its backward, group_loops.h) are compiled for the baseline ISA and, on
// x86, again for AVX2+FMA (what they gain most from: 8-wide vectors and registers enough for the lane
// sums); the CPU picks at run time, as ATen's own kernels do. RCM_FSAD_CPU_CAPABILITY=default forces
// the baseline build (like ATEN_CPU_CAPABILITY), so that the tests cover both. An op asks once, on the
// calling thread (make_sampling), not once per tile on the workers: one read of the environment per
// op, and one build for all of an op's tiles.
#if defined(__x86_64__) && defined(__GNUC__)
#define RCM_FSAD_AVX2_DISPATCH 1
#endif
bool use_avx2_fma() {
#ifdef RCM_FSAD_AVX2_DISPATCH
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* forced = std::getenv("RCM_FSAD_CPU_CAPABILITY");
  return has && !(forced != nullptr && std::strcmp(forced, "default") == 0);
#else
  return false;
#endif
}

// run_hot_loop(avx2_fma, loop) runs loop() in the build that avx2_fma picks. loop: a lambda marked
// RCM_FSAD_HOT_LOOP, so that each build inlines, and compiles, a copy of its body.
#define RCM_FSAD_HOT_LOOP __attribute__((always_inline))

template <typename Loop>
void baseline_build(const Loop& loop) {
  loop();
}

#ifdef RCM_FSAD_AVX2_DISPATCH
template <typename Loop>
[[gnu::target("avx2,fma")]] void avx2_build(const Loop& loop) {
  loop();
}
#endif

template <typename Loop>
void run_hot_loop(bool avx2_fma, const Loop& loop) {
#ifdef RCM_FSAD_AVX2_DISPATCH
  if (avx2_fma) return avx2_build(loop);
#endif
  baseline_build(loop);
}

template <typename scalar_t>
void sample_columns(const Sampling<scalar_t>& s, int64_t row_begin, int64_t row_end, const ColumnWindow& window,
                    scalar_t* cols) {
  run_hot_loop(s.avx2_fma, [&]() RCM_FSAD_HOT_LOOP { sample_columns_body(s, row_begin, row_end, window, cols); });
}

template <typename scalar_t>
void sample_columns_backward(const Sampling<scalar_t>& s, int64_t row_begin, int64_t row_end,
                             const ColumnWindow& window, const scalar_t* grad_cols, scalar_t* grad_input,
                             scalar_t* sink, scalar_t* grad_offset, FieldStrides grad_offset_strides,
                             scalar_t* grad_mask, FieldStrides grad_mask_strides) {
  run_hot_loop(s.avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
    sample_columns_backward_body(s, row_begin, row_end, window, grad_cols, grad_input, sink, grad_offset,
                                 grad_offset_strides, grad_mask, grad_mask_strides);
  });
}

// planes[oc * plane_stride + r] = rows[r * channels + oc] for the len rows of an NHWC tile: an image's
// output pixels as NCHW planes.
template <typename T>
[[gnu::always_inline]] inline void store_planes(const T* rows, int64_t len, int64_t channels, T* planes,
                                                int64_t plane_stride) {
  for (int64_t oc = 0; oc < channels; ++oc) {
    T* __restrict__ plane = planes + oc * plane_stride;
    for (int64_t r = 0; r < len; ++r) plane[r] = rows[r * channels + oc];
  }
}

template <typename scalar_t>
Sampling<scalar_t> make_sampling(const DeformConvGeometry& g, const at::Tensor& input_nhwc,
                                 const at::Tensor& offset, const std::optional<at::Tensor>& mask,
                                 const at::Tensor& zeros, const std::vector<kernels::KernelPoint>& points) {
  return {g,
          input_nhwc.const_data_ptr<scalar_t>(),
          offset.const_data_ptr<scalar_t>(),
          field_strides(offset),
          mask.has_value() ? mask->const_data_ptr<scalar_t>() : nullptr,
          mask.has_value() ? field_strides(*mask) : FieldStrides{0, 0, 0, 0},
          zeros.const_data_ptr<scalar_t>(),
          use_avx2_fma(),
          points.data()};
}

std::vector<kernels::KernelPoint> kernel_points(const DeformConvGeometry& g) {
  std::vector<kernels::KernelPoint> points;
  for (int64_t k = 0; k < g.kernel_points(); ++k) points.push_back(kernels::kernel_point(g, k));
  return points;
}

// at::parallel_for over [begin, end) whose body calls ATen operators (the tiles' GEMMs): the worker
// threads take the caller's thread-local state, which OpenMP threads do not inherit. Without it a
// worker would dispatch as if above autograd, and reject out= GEMMs on tensors that require grad.
template <typename F>
void parallel_for_calling_ops(int64_t begin, int64_t end, const F& body) {
  const at::ThreadLocalState state;
  at::parallel_for(begin, end, 1, [&](int64_t b, int64_t e) {
    const at::ThreadLocalStateGuard guard(state);
    body(b, e);
  });
}

// float16 and bfloat16 run on the CPU in float32: converted on the way in, results rounded back.
bool computed_in_float(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
}

std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->to(at::kFloat)) : std::nullopt;
}

void check_cpu_dtype(const at::Tensor& input) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "deform_conv2d: the CPU kernel supports float32, float64, float16 and bfloat16 inputs, got ",
              input.scalar_type());
}

at::Tensor deform_conv2d_cpu(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                             const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DeformConvGeometry g =
      check_deform_conv2d_args(input, offset, weight, mask, bias, stride, padding, dilation);
  if (computed_in_float(input)) {
    return deform_conv2d_cpu(input.to(at::kFloat), offset.to(at::kFloat), weight.to(at::kFloat), to_float(mask),
                             to_float(bias), stride, padding, dilation)
        .to(input.scalar_type());
  }
  check_cpu_dtype(input);
  const int64_t rows = g.batch * g.out_pixels();
  // The tiles write the output in its own layout: no NHWC buffer and no copy from it (a copy took 0.7 ms
  // of a 64-channel layer's forward at 56x56, and 2.3 of 3.8 ms at 1024 output channels and 14x14, on
  // 2 threads).
  const at::Tensor out = empty_output(input, g);
  if (rows > 0 && g.out_channels > 0) {
    const at::Tensor input_nhwc = input.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor wmat = weight_matrix(weight);
    const at::Tensor zeros = at::zeros({g.channels}, input.options());
    const std::vector<kernels::KernelPoint> points = kernel_points(g);
    const bool loops = use_group_loops(g);
    // A channels_last output is NHWC rows, which the GEMMs write in place. They write an NCHW output's
    // tile apart and store it as planes: an output a GEMM per image wrote in place took 1.4-2.9x as long
    // at 7x7 and 3x3 pixels, and 5% longer at 14x14 (2 threads).
    const bool nhwc = out.stride(1) == 1;
    const at::Tensor out_rows = nhwc ? out.permute({0, 2, 3, 1}).view({rows, g.out_channels}) : at::Tensor();
    const ColumnWindow window =
        ColumnWindow::every_column(g, loops ? ColumnLayout::PointMajor : ColumnLayout::GroupMajor);
    const at::Tensor weight_om = loops ? weight_output_major(wmat, g) : at::Tensor();
    const std::optional<at::Tensor> bias_c = bias.has_value() ? std::optional(bias->contiguous()) : std::nullopt;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_cpu", [&] {
      const Sampling<scalar_t> s = make_sampling<scalar_t>(g, input_nhwc, offset, mask, zeros, points);
      const int64_t tile_rows = forward_tile_rows(rows, at::get_num_threads());
      const int64_t tiles = (rows + tile_rows - 1) / tile_rows;
      parallel_for_calling_ops(0, tiles, [&](int64_t t0, int64_t t1) {
        at::Tensor cols = at::empty({tile_rows, g.column_width()}, input.options());
        scalar_t* cols_ptr = cols.mutable_data_ptr<scalar_t>();
        at::Tensor scratch = at::empty({loops ? g.out_channels : 0}, input.options());
        at::Tensor tile_out = at::empty({loops || nhwc ? 0 : tile_rows, g.out_channels}, input.options());
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t r0 = t * tile_rows;
          const int64_t len = std::min(tile_rows, rows - r0);
          sample_columns(s, r0, r0 + len, window, cols_ptr);
          if (!loops) {
            // NHWC rows: the output's own where it is channels_last, else the tile's, stored below.
            at::Tensor out_tile = nhwc ? out_rows.narrow(0, r0, len) : tile_out.narrow(0, 0, len);
            columns_times_weight(cols.narrow(0, 0, len), wmat, bias_c, out_tile, g);
            if (nhwc) continue;
          }
          // The tile's rows image by image: an image's output pixels are out.stride(3) apart, its
          // channels out.stride(1).
          for (int64_t a = 0, n = r0 / g.out_pixels(); a < len; ++n) {
            const int64_t pixel0 = r0 + a - n * g.out_pixels();
            const int64_t seg = std::min(len - a, g.out_pixels() - pixel0);
            scalar_t* o = out.mutable_data_ptr<scalar_t>() + n * out.stride(0) + pixel0 * out.stride(3);
            run_hot_loop(s.avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
              if (loops) {
                group_loops_forward(group_block(g), seg, cols_ptr + a * g.column_width(),
                                    weight_om.const_data_ptr<scalar_t>(),
                                    bias_c.has_value() ? bias_c->const_data_ptr<scalar_t>() : nullptr, o,
                                    out.stride(3), out.stride(1), scratch.mutable_data_ptr<scalar_t>());
              } else {
                store_planes(tile_out.const_data_ptr<scalar_t>() + a * g.out_channels, seg, g.out_channels, o,
                             out.stride(1));
              }
            });
            a += seg;
          }
        }
      });
    });
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& weight, const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DeformConvGeometry g = check_deform_conv2d_backward_args(grad_output, input, offset, weight,
                                                                 mask, stride, padding, dilation);
  if (computed_in_float(input)) {
    const auto [gi, go, gw, gm] =
        deform_conv2d_backward_cpu(grad_output.to(at::kFloat), input.to(at::kFloat), offset.to(at::kFloat),
                                   weight.to(at::kFloat), to_float(mask), stride, padding, dilation);
    const at::ScalarType t = input.scalar_type();
    return {gi.to(t), go.to(t), gw.to(t), gm.to(t)};
  }
  check_cpu_dtype(input);
  const int64_t threads = at::get_num_threads();
  const int64_t rows = g.batch * g.out_pixels();
  const int64_t image_size = g.height * g.width * g.channels;
  const int64_t copy_bytes = split_copy_bytes();
  const int64_t bands =
      backward_bands(g.batch, g.out_pixels(), threads, g.batch * image_size * input.element_size(), copy_bytes);
  const int64_t band_rows = (g.out_pixels() + bands - 1) / bands;
  const WeightGradientSplit split =
      weight_gradient_split(g, rows, threads, weight.numel() * weight.element_size(), copy_bytes);
  const int64_t blocks = g.groups / split.conv_groups * split.kernel_point_runs;
  const int64_t range_rows = (rows + split.row_ranges - 1) / split.row_ranges;
  at::Tensor grad_input_bands = at::zeros({bands, g.batch, g.height, g.width, g.channels}, input.options());
  OffsetMaskGradients sample_gradients = offset_mask_gradients(input, offset, mask, g);
  at::Tensor grad_offset = sample_gradients.offset;
  at::Tensor grad_mask = sample_gradients.mask;
  const at::Tensor wmat = weight_matrix(weight);
  at::Tensor grad_wmat_ranges = at::zeros({split.row_ranges, wmat.size(0), wmat.size(1)}, weight.options());
  const bool loops = use_group_loops(g);
  const ColumnLayout layout = loops ? ColumnLayout::PointMajor : ColumnLayout::GroupMajor;
  const ColumnWindow every_column = ColumnWindow::every_column(g, layout);
  const at::Tensor weight_om = loops ? weight_output_major(wmat, g) : at::Tensor();
  if (rows > 0 && g.out_channels > 0) {
    const at::Tensor input_nhwc = input.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor grad_rows =
        grad_output.permute({0, 2, 3, 1}).contiguous().view({-1, g.out_channels});
    const at::Tensor zeros = at::zeros({g.channels}, input.options());
    const std::vector<kernels::KernelPoint> points = kernel_points(g);
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
      const Sampling<scalar_t> s = make_sampling<scalar_t>(g, input_nhwc, offset, mask, zeros, points);
      const FieldStrides gos = field_strides(grad_offset);
      const FieldStrides gms = mask.has_value() ? field_strides(grad_mask) : FieldStrides{0, 0, 0, 0};
      scalar_t* gm_ptr = mask.has_value() ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr;
      // The input, offset and mask gradients. Task t is band t % bands of image t / bands: the only
      // writer of its copy of that image's input gradient.
      parallel_for_calling_ops(0, g.batch * bands, [&](int64_t t0, int64_t t1) {
        at::Tensor grad_cols = at::empty({kRowTile, g.column_width()}, input.options());
        at::Tensor sink = at::zeros({4, g.channels}, input.options());
        at::Tensor scratch = at::empty({loops ? g.out_channels : 0}, input.options());
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t image_row = (t / bands) * g.out_pixels();
          const int64_t begin = image_row + std::min(g.out_pixels(), (t % bands) * band_rows);
          const int64_t end = image_row + std::min(g.out_pixels(), (t % bands + 1) * band_rows);
          scalar_t* grad_input = grad_input_bands.mutable_data_ptr<scalar_t>() + (t % bands) * g.batch * image_size;
          for (int64_t r0 = begin; r0 < end; r0 += kRowTile) {
            const int64_t len = std::min(kRowTile, end - r0);
            if (loops) {
              const scalar_t* go = grad_rows.const_data_ptr<scalar_t>() + r0 * g.out_channels;
              const scalar_t* w = weight_om.const_data_ptr<scalar_t>();
              scalar_t* gc = grad_cols.mutable_data_ptr<scalar_t>();
              scalar_t* row_om = scratch.mutable_data_ptr<scalar_t>();
              run_hot_loop(s.avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
                group_loops_columns_gradient(group_block(g), len, go, g.out_channels, w, gc, row_om);
              });
            } else {
              at::Tensor grad_cols_tile = grad_cols.narrow(0, 0, len);
              columns_gradient(grad_rows.narrow(0, r0, len), wmat, grad_cols_tile, g);
            }
            sample_columns_backward(s, r0, r0 + len, every_column, grad_cols.const_data_ptr<scalar_t>(), grad_input,
                                    sink.mutable_data_ptr<scalar_t>(), grad_offset.mutable_data_ptr<scalar_t>(),
                                    gos, gm_ptr, gms);
          }
        }
      });
      // The weight gradient. Task t is block t % blocks (a run of conv groups, or of one group's kernel
      // points) of range t / blocks of the rows: it samples that block's columns and adds, group by group,
      // grad_rows^T x them to the range's copy, a tile of rows at a time (with the group loops, each tile's
      // sum apart first, as a GEMM per tile sums it). No two tasks write the same block of a copy.
      const int64_t out_cols = g.out_channels / g.groups;
      const int64_t cg = g.channels_per_group();
      const int64_t run = g.kernel_points() / split.kernel_point_runs;
      const int64_t group_width = run * cg;  // a group's columns in a block
      const int64_t weight_row = wmat.size(1);
      const int64_t tile_rows = kRowTile * blocks;  // as many elements as a tile of kRowTile whole rows
      parallel_for_calling_ops(0, split.row_ranges * blocks, [&](int64_t t0, int64_t t1) {
        at::Tensor cols = at::empty({tile_rows, split.conv_groups * group_width}, input.options());
        scalar_t* cols_ptr = cols.mutable_data_ptr<scalar_t>();
        const GroupBlock block{split.conv_groups, cg, out_cols, run};
        at::Tensor tile_sums = loops ? at::empty({group_width, block.outputs()}, input.options()) : at::Tensor();
        at::Tensor scratch = at::empty({loops ? block.outputs() : 0}, input.options());
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t range = t / blocks;
          const int64_t group0 = t % blocks / split.kernel_point_runs * split.conv_groups;
          const int64_t k0 = t % split.kernel_point_runs * run;
          const ColumnWindow window =
              ColumnWindow::conv_groups(g, group0, group0 + split.conv_groups, k0, k0 + run, layout);
          // Samples the tiles of the range's rows in turn and hands each to add(r0, len).
          const auto for_each_tile = [&](const auto& add) {
            const int64_t end = std::min(rows, (range + 1) * range_rows);
            for (int64_t r0 = range * range_rows; r0 < end; r0 += tile_rows) {
              const int64_t len = std::min(tile_rows, end - r0);
              sample_columns(s, r0, r0 + len, window, cols_ptr);
              add(r0, len);
            }
          };
          if (loops) {
            // The block of the range's copy, grad_wmat[oc, k * cg + c'] for the block's output channels
            // oc and kernel points k, and its columns of grad_rows.
            scalar_t* grad_block =
                grad_wmat_ranges[range].mutable_data_ptr<scalar_t>() + group0 * out_cols * weight_row + k0 * cg;
            const scalar_t* grad_row_block = grad_rows.const_data_ptr<scalar_t>() + group0 * out_cols;
            scalar_t* sums = tile_sums.mutable_data_ptr<scalar_t>();
            scalar_t* row_om = scratch.mutable_data_ptr<scalar_t>();
            for_each_tile([&](int64_t r0, int64_t len) {
              run_hot_loop(s.avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
                std::fill(sums, sums + group_width * block.outputs(), scalar_t(0));
                group_loops_weight_gradient(block, len, grad_row_block + r0 * g.out_channels, g.out_channels,
                                            cols_ptr, sums, row_om);
                for (int64_t gi = 0; gi < block.groups; ++gi) {
                  for (int64_t o = 0; o < block.m; ++o) {
                    scalar_t* grad_oc = grad_block + (gi * block.m + o) * weight_row;
                    const scalar_t* sums_oc = sums + block.output_major(gi, o);
                    for (int64_t j = 0; j < group_width; ++j) grad_oc[j] += sums_oc[j * block.outputs()];
                  }
                }
              });
            });
            continue;
          }
          // Each group's block of the range's copy and its columns of grad_rows, made once per task.
          std::vector<at::Tensor> grad_blocks, grad_row_blocks;
          for (int64_t group = group0; group < group0 + split.conv_groups; ++group) {
            grad_blocks.push_back(
                grad_wmat_ranges[range].narrow(0, group * out_cols, out_cols).narrow(1, k0 * cg, group_width));
            grad_row_blocks.push_back(grad_rows.narrow(1, group * out_cols, out_cols));
          }
          for_each_tile([&](int64_t r0, int64_t len) {
            const at::Tensor tile = cols.narrow(0, 0, len);
            for (int64_t i = 0; i < split.conv_groups; ++i) {
              grad_blocks[i].addmm_(grad_row_blocks[i].narrow(0, r0, len).t(),
                                    tile.narrow(1, i * group_width, group_width));
            }
          });
        }
      });
    });
  }
  const at::Tensor grad_input = bands > 1 ? grad_input_bands.sum(0) : grad_input_bands.squeeze(0);
  const at::Tensor grad_wmat = split.row_ranges > 1 ? grad_wmat_ranges.sum(0) : grad_wmat_ranges.squeeze(0);
  return {from_nhwc(grad_input, input.scalar_type(), output_memory_format(input)), grad_offset,
          weight_from_matrix(grad_wmat, weight), grad_mask};
}

}  // namespace

const char* cpu_capability() { return use_avx2_fma() ? "avx2+fma" : "default"; }

TORCH_LIBRARY_IMPL(rcm_fsad, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_cpu);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cpu);
}

}  // namespace rcm_fsad
