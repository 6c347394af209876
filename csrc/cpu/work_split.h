// How the CPU backend spreads an op over threads: the forward's tiles of output pixels, the backward's
// bands of an image's output pixels (input gradient, and the weight gradient where a copy per thread
// fits) and otherwise blocks of columns times ranges of rows (weight gradient), within a budget of copies
// that let threads split a sum.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <numeric>

#include "../kernels/deform_conv2d_math.cuh"

namespace rcm_fsad::cpu {

using kernels::DeformConvGeometry;

// Output pixels per tile: a 256 x (C*K) columns tile of a 3x3, 256-channel layer is 2.4 MB in fp32.
constexpr int64_t kRowTile = 256;

// Output pixels per forward tile for `rows` rows on `threads` threads: at most kRowTile, and as many
// tiles as the fewest rounds of kRowTile tiles on every thread (7 tiles of 256 on 2 threads become 8
// of 196, so that no thread waits a whole tile for the other).
inline int64_t forward_tile_rows(int64_t rows, int64_t threads) {
  const int64_t tiles = (rows + kRowTile - 1) / kRowTile;
  const int64_t rounds = (tiles + threads - 1) / threads;
  return std::max<int64_t>(1, (rows + rounds * threads - 1) / (rounds * threads));
}

// A number of bytes (digits only) from the environment variable `name`, else `fallback`.
inline int64_t bytes_from_environment(const char* name, int64_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr) return fallback;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  // Digits only: strtoll would also take leading spaces and a sign.
  TORCH_CHECK(std::isdigit(static_cast<unsigned char>(*text)) && *end == '\0', name,
              " must be a number of bytes (0 or more), got '", text, "'");
  return std::min<int64_t>(value, int64_t(1) << 60);  // beyond any memory; no overflow in the counts below
}

// Copies that let threads split a sum (the input gradient's, one per band of rows; the weight
// gradient's, one per range of rows) take at most this many bytes beyond the first, each kind:
// RCM_FSAD_CPU_COPY_BYTES (a number of bytes, 0 for no copies), else 256 MiB. Read once per backward.
inline int64_t split_copy_bytes() { return bytes_from_environment("RCM_FSAD_CPU_COPY_BYTES", int64_t(256) << 20); }

// A worker's NHWC copies of an input's images (sampling.h's WorkerImages) take at most this many bytes, or one
// image: RCM_FSAD_CPU_IMAGE_COPY_BYTES (for tests: runs of images that end inside a tile of rows), else 1
// MiB. Read once per op.
inline int64_t image_copy_bytes() { return bytes_from_environment("RCM_FSAD_CPU_IMAGE_COPY_BYTES", int64_t(1) << 20); }

// The share of `threads` threads' time that `tasks` equal tasks keep busy.
inline double busy_share(int64_t tasks, int64_t threads) {
  const int64_t rounds = (tasks + threads - 1) / threads;
  return double(tasks) / double(rounds * threads);
}

// The fewest splits of each of `units` units of work, at most `most`, that give every one of `threads`
// threads at least 7/8 of an even share of the units x splits tasks; else the split with the largest.
inline int64_t fewest_splits(int64_t units, int64_t threads, int64_t most) {
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
inline int64_t backward_bands(int64_t batch, int64_t out_pixels, int64_t threads, int64_t grad_input_bytes,
                              int64_t copy_bytes) {
  if (batch <= 0) return 1;
  const int64_t affordable = copy_bytes / std::max<int64_t>(1, grad_input_bytes) + 1;
  return fewest_splits(batch, threads, std::min({threads, affordable, out_pixels}));
}

// The weight gradient's tasks in a second pass (first_pass_weight_gradient_workers says when): blocks of
// columns times `row_ranges` ranges of the rows, each range adding into a copy of its own. A block is
// `conv_groups` consecutive conv groups' columns, or, where that is one group, a run of its kernel points
// (`kernel_point_runs` a group): a ColumnWindow either way. A block of whole offset groups samples each
// point once, as the forward does; a block inside an offset group repeats its points' sampling (offsets,
// weights, corners) once for each block, which costs most where a conv group has few channels (a
// depthwise layer's backward took 1.65x as long with a block a conv group, on 2 threads). So blocks of
// whole offset groups, split to keep the threads busiest with the copies that fit in split_copy_bytes(),
// with the fewest runs, then the fewest copies (whole conv groups sample a row at a time, as the forward
// does: a kernel point a block took 4-8% longer at 64 channels on 2 threads); single conv groups with
// their kernel-point runs only where those keep fewer than 7/8 of the threads busy and single groups keep
// more. 2 threads: 1 run, 2 ranges; 64 threads and a 512-channel 3x3 layer in float32: 3 runs, 21 ranges
// (189 MiB, where a copy per thread took 576 MiB).
struct WeightGradientSplit {
  int64_t conv_groups;  // a block's; 1 wherever kernel_point_runs > 1
  int64_t kernel_point_runs;
  int64_t row_ranges;
  double share;  // of the threads' time busy (busy_share)
};

// The busiest split into blocks of `conv_groups` conv groups (kernel-point runs where that is 1) and at
// most `most_ranges` ranges.
inline WeightGradientSplit busiest_split(const DeformConvGeometry& g, int64_t conv_groups, int64_t threads,
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

inline WeightGradientSplit weight_gradient_split(const DeformConvGeometry& g, int64_t rows, int64_t threads,
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

// Whether the backward adds the weight gradient in its first pass, and on how many workers (0: in a second
// pass, split as weight_gradient_split says). A worker runs a contiguous share of the first pass's `tasks`
// (backward_bands' images times bands) and adds its tiles' weight gradient to a copy of its own, from the
// columns its scatter writes as it goes (sample_columns_backward), where the second pass samples every
// column again: a sample's offsets, weights and corners once per backward instead of twice. Taken where
// the copies beyond the first fit in copy_bytes and the tasks keep at least the share of the threads busy
// that the second pass's split would (`second_pass_share`); a batch of fewer images than threads, whose
// input gradient is too large for band copies, keeps few threads busy in the first pass.
inline int64_t first_pass_weight_gradient_workers(int64_t tasks, int64_t threads, int64_t grad_weight_bytes,
                                                  int64_t copy_bytes, double second_pass_share) {
  const int64_t workers = std::min(threads, tasks);
  if (workers < 1 || workers - 1 > copy_bytes / std::max<int64_t>(1, grad_weight_bytes)) return 0;
  return busy_share(tasks, threads) >= second_pass_share ? workers : 0;
}

// How a backward spreads its work. The first pass's tasks (task t: band t % bands of image t / bands, of at
// most band_rows output pixels) run on `workers` workers, each a contiguous run of tasks. The weight gradient
// is added in the first pass where first_pass_weight_gradient_workers says so (a copy a worker), else in a
// second pass of `blocks` blocks of columns (weight_gradient_split) times `weights.row_ranges` ranges of at
// most range_rows rows (a copy a range).
struct BackwardSplit {
  int64_t bands, band_rows, tasks, workers;
  bool weight_in_first_pass;
  WeightGradientSplit weights;
  int64_t blocks, range_rows;

  // The first of worker w's tasks; its last is first_task(w + 1) - 1.
  int64_t first_task(int64_t w) const { return w * tasks / workers; }
  // The weight gradient's copies: one a first-pass worker, or one a second-pass range.
  int64_t weight_copies() const { return weight_in_first_pass ? workers : weights.row_ranges; }
};

// The split of a backward on `threads` threads whose sums take element_size bytes a value.
inline BackwardSplit backward_split(const DeformConvGeometry& g, int64_t threads, int64_t element_size,
                                    int64_t copy_bytes) {
  BackwardSplit b;
  const int64_t rows = g.batch * g.out_pixels();
  const int64_t grad_input_bytes = g.batch * g.height * g.width * g.channels * element_size;
  b.bands = backward_bands(g.batch, g.out_pixels(), threads, grad_input_bytes, copy_bytes);
  b.band_rows = (g.out_pixels() + b.bands - 1) / b.bands;
  b.tasks = g.batch * b.bands;
  const int64_t grad_weight_bytes = g.out_channels * g.channels_per_group() * g.kernel_points() * element_size;
  b.weights = weight_gradient_split(g, rows, threads, grad_weight_bytes, copy_bytes);
  const int64_t first_pass_workers =
      first_pass_weight_gradient_workers(b.tasks, threads, grad_weight_bytes, copy_bytes, b.weights.share);
  b.weight_in_first_pass = first_pass_workers > 0;
  b.workers = b.weight_in_first_pass ? first_pass_workers : b.tasks;
  b.blocks = g.groups / b.weights.conv_groups * b.weights.kernel_point_runs;
  b.range_rows = (rows + b.weights.row_ranges - 1) / b.weights.row_ranges;
  return b;
}

}  // namespace rcm_fsad::cpu
