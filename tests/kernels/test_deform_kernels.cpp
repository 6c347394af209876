// Runs every __global__ kernel of csrc/kernels/ on the CPU through the emulation harness and
// compares it with the float64 reference of deform_reference.h.
//
//   test_deform_kernels <kernel>/<dtype>/<index>   im2col, col2im or col2im_deterministic,
//                                                  e.g. col2im/half/int64
//   test_deform_kernels igemm/<dtype>              the implicit-GEMM forward, e.g. igemm/bfloat16
//   test_deform_kernels wmma/<half|bfloat16|tf32>  the tensor-core implicit-GEMM forward (float
//                                                  tensors for tf32)
//   test_deform_kernels wmma_async/<half|bfloat16|tf32>  the tensor-core forward with cp.async copies
//   test_deform_kernels mma/<half|bfloat16|tf32|tf32_split>  the mma.sync forward (operands in
//                                                  registers), on weights repacked by its fragments
//                                                  kernel; tf32_split: float32 on split TF32
//   test_deform_kernels reference                  checks the reference's gradients by finite differences
//   test_deform_kernels splits                     the launcher's kernel-point split count (forward_splits)
//   test_deform_kernels wgmma/<half|bfloat16|tf32|tf32_split>  the wgmma forward (sm_90a), on weights
//                                                  repacked by its tiles kernel
//   test_deform_kernels mma_steps                  the mma.sync kernel's steps per kernel point
//   test_deform_kernels transpose/<in>[_to_<out>]  the layout transpose (batched_transpose_kernel),
//                                                  e.g. transpose/bfloat16, transpose/float_to_half
//   test_deform_kernels fuzz [<first seed> <count>]  every kernel on random problems (random_problem):
//                                                  kFuzzProblems from kFuzzFirstSeed, or count from
//                                                  the seed given
//   test_deform_kernels --list
//
// dtype: float | double | half | bfloat16 (16-bit types accumulate in float, as the CUDA backend
// does for c10::Half/BFloat16); index: int32 | int64.
// im2col and col2im (each with 8, 16 and 32 lanes a sample) run each problem below with several launch
// configurations: the production one (256 threads, grid from the work size, capped), all blocks at
// once (AllBlocks: races between blocks), and a small odd grid (grid-stride loops); col2im's columns, which
// it writes for the weight gradient, are checked as im2col's are. col2im_deterministic is the deterministic
// backward (deform_col2im_kernel with the grad_input scatter off, then deform_sample_table_kernel,
// deform_sample_keys_kernel, the keys' stable sort (std::stable_sort here) and
// deform_col2im_input_gather_kernel) under the same configurations plus one warp in launches of 5
// rows; its input gradient must also be the same bit for bit under all of them. The implicit GEMMs
// have one launch shape each (the grid is the tiling; BlockByBlock: their blocks write disjoint outputs, each in its own dynamic shared
// memory, which starts poisoned): they run on every problem plus five that span several row and column
// tiles of either tile size, several reduction steps, and the tensor-core kernels' 16-byte-load
// paths and block widths; unsplit and split over kernel points. The cp.async tensor-core kernel
// and the mma.sync one run on the problems whose channel runs are whole 16-byte vectors (the
// mma.sync one where its steps are alike in every conv group: mma_kernel_applies). The kernels that
// pick 16-byte accesses at run time, im2col, col2im and the synchronous WMMA forward, also run a
// problem of whole vectors from each base they check one element past a 16-byte boundary (Misaligned).
#include "cuda_emulation.h"
// The kernel headers come after the harness.
#include "kernels/deform_conv2d_implicit_gemm.cuh"
#include "kernels/deform_conv2d_implicit_gemm_mma.cuh"
#include "kernels/deform_conv2d_implicit_gemm_wgmma.cuh"
#include "kernels/deform_conv2d_implicit_gemm_wmma.cuh"
#include "kernels/deform_conv2d_implicit_gemm_wmma_async.cuh"
#include "kernels/deform_conv2d_kernels.cuh"
#include "kernels/layout_transpose.cuh"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <numeric>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "deform_reference.h"

namespace {

using rcm_fsad::kernels::DeformConvGeometry;
using rcm_fsad::kernels::FieldStrides;
using reference::Shape;

// ---------------------------------------------------------------------------------------------
// Problems.

enum class Layout { Contiguous, ChannelsLast, Padded };

const char* layout_name(Layout l) {
  return l == Layout::Contiguous ? "contiguous" : l == Layout::ChannelsLast ? "channels_last" : "padded";
}

struct Problem {
  const char* name;
  Shape shape;
  Layout layout;         // of offset, mask, grad_offset and grad_mask
  int64_t chunk;         // rows per launch of im2col/col2im (0: all rows in one launch)
  uint64_t seed;
  int64_t out_channels;  // for the implicit GEMM (a multiple of groups); odd seeds also get a bias
};

// N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, offset_groups, mask. The output grids are
// small (the offsets, not the output size, reach the corner cases) because every emulated warp
// collective costs a few microseconds of OS context switches per lane.
const std::vector<Problem>& problems() {
  static const std::vector<Problem> list = {
      // out 2x3, rows 12
      {"basic_3x3_stride2", {2, 6, 4, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, true}, Layout::Contiguous, 0, 1, 5},
      // out 3x2, rows 6, offset groups 2 (4 channels each), conv groups 2
      {"strided_dilated_2x3_groups2", {1, 8, 7, 6, 2, 3, 2, 2, 0, 1, 1, 2, 2, 2, true}, Layout::ChannelsLast, 0, 2, 6},
      // out 2x2, rows 4, one channel per offset group, no mask (DCNv1)
      {"dcnv1_offset_group_per_channel", {1, 5, 6, 5, 3, 3, 3, 3, 2, 2, 2, 2, 1, 5, false}, Layout::Padded, 0, 3, 3},
      // out 4x2 (stride 1 along y), rows 8, conv groups 3 = offset groups 3
      {"groups3_offset_groups3", {1, 6, 4, 7, 3, 3, 1, 3, 1, 0, 1, 1, 3, 3, true}, Layout::Contiguous, 0, 4, 9},
      // 40 channels in one offset group: lanes 0..7 take two channels (the lane tail); rows 6
      {"wide_lane_tail_c40", {1, 40, 4, 5, 3, 3, 2, 2, 1, 1, 1, 1, 4, 1, true}, Layout::ChannelsLast, 0, 5, 8},
      // out 4x3, rows 24 in launches of 7 rows (first_row > 0, a short last chunk)
      {"chunked_2x3_c7", {2, 7, 6, 6, 2, 3, 2, 2, 1, 1, 1, 1, 7, 1, true}, Layout::Padded, 7, 6, 7},
      // 16-byte vectors of channels (im2col): two conv groups of 80 channels, 10 vectors of 16-bit
      // types, 20 of float, 40 of double (a lane tail); out 2x2, rows 4
      {"vector_runs_c160_groups2", {1, 160, 4, 4, 3, 3, 1, 1, 0, 0, 1, 1, 2, 1, true}, Layout::ChannelsLast, 0, 12, 10},
  };
  return list;
}

// For the implicit GEMMs only (too many warps for col2im's budget). With the double tiles of the
// CUDA-core kernel (64 x 64, steps of 16 channels): 98 rows = two row tiles (the second partial), 70
// output channels = two column tiles, one conv group over two offset groups (two channel runs per
// kernel point); and 40 channels in one group = reduction steps of 16, 16, 8. With 128-row tiles
// (the float CUDA-core kernel, the tensor-core one: 64 or 128 output channels wide, steps of 32
// channels): the problems above take the tensor-core kernel's element-load paths (channel counts
// not a multiple of 8); the last three its 16-byte-load paths, with two row tiles (243 rows) and 70
// output channels (one partial 128-wide tile), offset-group runs of 24 channels (a partial vector
// of zeros), conv groups of 40 channels (reduction steps of 32 and 8), and 140 output channels (two
// 128-wide tiles, the second partial). And 40 channels in offset groups of 10: whole vectors per
// conv group but not per offset group (for 16-bit types and float alike), so runs of a kernel point
// longer than a vector start off a 16-byte boundary and must not be read 16 bytes at a time. Last,
// three conv groups of whole vectors (16 channels, 8 outputs each), so that the tensor-core kernels
// meet a group past the second (grid z 2) among the fixed problems too.
const std::vector<Problem>& igemm_problems() {
  static const std::vector<Problem> list = [] {
    std::vector<Problem> l = problems();
    l.push_back({"tiles_98rows_70cout_og2", {2, 6, 8, 8, 2, 2, 1, 1, 0, 0, 1, 1, 1, 2, true}, Layout::ChannelsLast, 0,
                 7, 70});
    l.push_back({"deep_c40_one_group", {1, 40, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, true}, Layout::Contiguous, 0, 8, 5});
    l.push_back({"wmma_tiles_243rows_70cout_og2", {3, 48, 9, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 2, true}, Layout::ChannelsLast, 0,
                 9, 70});
    l.push_back({"wmma_groups2_c80", {1, 80, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1, 2, 1, true}, Layout::Padded, 0, 10, 34});
    l.push_back({"wmma_wide_140cout", {1, 16, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, true}, Layout::Contiguous, 0, 11, 140});
    l.push_back({"runs_off_vectors_c40_og4", {1, 40, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 4, true}, Layout::Contiguous, 0, 15,
                 20});
    l.push_back({"vectors_groups3_c48", {1, 48, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1, 3, 3, true}, Layout::ChannelsLast, 0, 17,
                 24});
    return l;
  }();
  return list;
}

// For the mma.sync kernel, whose blocks are 256 rows tall when a warp takes all its group's output
// channels (up to 128) and 128 rows by 256 columns when two warps do: the problems above, plus two
// of 300 rows: with 100 output channels (two row tiles of 256), and with 260 (three row tiles of
// 128, two column tiles, the second partial and its second warp of columns idle).
const std::vector<Problem>& mma_problems() {
  static const std::vector<Problem> list = [] {
    std::vector<Problem> l = igemm_problems();
    l.push_back({"mma_tiles_300rows_100cout", {3, 8, 10, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, true}, Layout::Contiguous,
                 0, 14, 100});
    l.push_back({"mma_tiles_300rows_260cout", {3, 16, 10, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, true}, Layout::ChannelsLast,
                 0, 13, 260});
    return l;
  }();
  return list;
}

// The problem of `list` called `name`; aborts where the list no longer has it (renamed: the list and
// the caller disagree).
const Problem& problem_named(const std::vector<Problem>& list, const std::string& name) {
  const auto it = std::find_if(list.begin(), list.end(), [&](const Problem& p) { return p.name == name; });
  if (it == list.end()) std::abort();
  return *it;
}

// Strides and allocation size of a (n, c, h, w) field in a layout.
struct FieldLayout {
  FieldStrides strides;
  int64_t size;
};

FieldLayout field_layout(Layout layout, int64_t n, int64_t c, int64_t h, int64_t w) {
  FieldStrides s{};
  switch (layout) {
    case Layout::Contiguous:
      s = {c * h * w, h * w, w, 1};
      break;
    case Layout::ChannelsLast:
      s = {h * w * c, 1, w * c, c};
      break;
    case Layout::Padded:  // gaps after every row, channel and image
      s.w = 1;
      s.h = w + 1;
      s.c = h * s.h + 2;
      s.n = c * s.c + 3;
      break;
  }
  return {s, (n - 1) * s.n + (c - 1) * s.c + (h - 1) * s.h + (w - 1) * s.w + 1};
}

DeformConvGeometry geometry(const Problem& p) {
  const Shape& s = p.shape;
  DeformConvGeometry g{};
  g.batch = s.N;
  g.channels = s.C;
  g.height = s.H;
  g.width = s.W;
  g.out_channels = p.out_channels;
  g.kernel_h = s.kh;
  g.kernel_w = s.kw;
  g.stride_h = s.sh;
  g.stride_w = s.sw;
  g.pad_h = s.ph;
  g.pad_w = s.pw;
  g.dil_h = s.dh;
  g.dil_w = s.dw;
  g.out_h = s.out_h();
  g.out_w = s.out_w();
  g.groups = s.groups;
  g.offset_groups = s.offset_groups;
  return g;
}

// ---------------------------------------------------------------------------------------------
// Data.

struct Rng {
  uint64_t state;
  uint64_t next() {  // splitmix64
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  int64_t integer(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(next() % static_cast<uint64_t>(hi - lo + 1)); }
};

// An offset for a tap at integer position `origin` along an axis of `extent` pixels: mostly
// random positions kept 0.1 away from integers (so the finite-difference and rounding arguments
// hold), plus the corner cases: exactly on the -1 border, on the last row, on an inside integer,
// exactly one past the end, just outside, far outside, and non-finite.
double pick_offset(Rng& rng, int64_t origin, int64_t extent, bool allow_non_finite) {
  const double o = static_cast<double>(origin);
  const double e = static_cast<double>(extent);
  const double r = rng.uniform();
  if (r < 0.55) return static_cast<double>(rng.integer(-2, 2)) + rng.uniform(0.1, 0.9);
  if (r < 0.63) return -1.0 - o;                 // position -1: torchvision's border gradient
  if (r < 0.68) return e - 1.0 - o;              // position extent-1: one-sided gradient
  if (r < 0.73) return static_cast<double>(rng.integer(-1, 1));  // an integer position
  if (r < 0.77) return e - o;                    // position extent: outside
  if (r < 0.80) return -1.25 - o;                // just outside the -1 border
  if (r < 0.86) {                                // far outside
    const double far[] = {1000.5, -1000.5, e + 7.5, -8.5 - o};
    return far[rng.integer(0, 3)];
  }
  if (r < 0.89 && allow_non_finite) {
    const double special[] = {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                              -std::numeric_limits<double>::infinity()};
    return special[rng.integer(0, 2)];
  }
  return static_cast<double>(rng.integer(-5, 5)) + rng.uniform(0.1, 0.9);
}

// Rounds a double through scalar_t (what the kernel sees), back to double (what the reference sees).
template <typename scalar_t>
double through(double v) {
  return static_cast<double>(static_cast<scalar_t>(static_cast<float>(v)));
}
template <>
double through<double>(double v) {
  return v;
}

template <typename scalar_t>
reference::Inputs make_inputs(const Problem& p, bool allow_non_finite = true) {
  const Shape& s = p.shape;
  Rng rng{p.seed * 7919u + 17u};
  reference::Inputs in;
  in.s = s;
  const int64_t K = s.points(), G = s.offset_groups;
  in.image.resize(s.N * s.H * s.W * s.C);
  for (double& v : in.image) v = through<scalar_t>(rng.uniform(-1.0, 1.0));
  const FieldLayout ol = field_layout(p.layout, s.N, 2 * G * K, s.out_h(), s.out_w());
  in.offset.data.assign(ol.size, std::numeric_limits<double>::quiet_NaN());
  in.offset.sn = ol.strides.n, in.offset.sc = ol.strides.c, in.offset.sh = ol.strides.h, in.offset.sw = ol.strides.w;
  for (int64_t n = 0; n < s.N; ++n) {
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t oy = 0; oy < s.out_h(); ++oy) {
          for (int64_t ox = 0; ox < s.out_w(); ++ox) {
            const int64_t ty = oy * s.sh - s.ph + (k / s.kw) * s.dh;
            const int64_t tx = ox * s.sw - s.pw + (k % s.kw) * s.dw;
            in.offset.at(n, 2 * (g * K + k), oy, ox) = through<scalar_t>(pick_offset(rng, ty, s.H, allow_non_finite));
            in.offset.at(n, 2 * (g * K + k) + 1, oy, ox) =
                through<scalar_t>(pick_offset(rng, tx, s.W, allow_non_finite));
          }
        }
      }
    }
  }
  if (s.has_mask) {
    const FieldLayout ml = field_layout(p.layout, s.N, G * K, s.out_h(), s.out_w());
    in.mask.data.assign(ml.size, std::numeric_limits<double>::quiet_NaN());
    in.mask.sn = ml.strides.n, in.mask.sc = ml.strides.c, in.mask.sh = ml.strides.h, in.mask.sw = ml.strides.w;
    for (int64_t n = 0; n < s.N; ++n) {
      for (int64_t c = 0; c < G * K; ++c) {
        for (int64_t oy = 0; oy < s.out_h(); ++oy) {
          for (int64_t ox = 0; ox < s.out_w(); ++ox) {
            const double r = rng.uniform();
            in.mask.at(n, c, oy, ox) = through<scalar_t>(r < 0.05 ? 0.0 : r < 0.1 ? 1.0 : rng.uniform(0.0, 1.0));
          }
        }
      }
    }
  }
  in.grad_columns.resize(s.rows() * s.row_width());
  for (double& v : in.grad_columns) v = through<scalar_t>(rng.uniform(-1.0, 1.0));
  return in;
}

template <typename scalar_t>
std::vector<scalar_t> to_device(const std::vector<double>& v) {
  std::vector<scalar_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<scalar_t>(v[i]);
  return out;
}

// The sampling inputs as every launcher passes them: the NHWC input, offset and mask in their
// layouts (mask empty and null without modulation).
template <typename scalar_t>
struct SamplingOperands {
  std::vector<scalar_t> input, offset, mask;
  FieldStrides os, ms;

  explicit SamplingOperands(const reference::Inputs& in)
      : input(to_device<scalar_t>(in.image)),
        offset(to_device<scalar_t>(in.offset.data)),
        mask(to_device<scalar_t>(in.mask.data)),
        os{in.offset.sn, in.offset.sc, in.offset.sh, in.offset.sw},
        ms(in.s.has_mask ? FieldStrides{in.mask.sn, in.mask.sc, in.mask.sh, in.mask.sw} : FieldStrides{0, 0, 0, 0}) {}

  const scalar_t* mask_ptr() const { return mask.empty() ? nullptr : mask.data(); }
};

// A copy of v that starts one element past a 16-byte boundary, as a tensor view that does not start
// on a vector does: the kernels that choose 16-byte accesses at run time must not take them for it
// (the emulator faults on a misaligned vector access, as the GPU does).
// The buffer holds exactly one element more than v, so AddressSanitizer still sees an overrun.
template <typename T>
class Misaligned {
  static_assert(std::is_trivially_copyable_v<T> && 16 % sizeof(T) == 0 && sizeof(T) < 16);

 public:
  explicit Misaligned(const std::vector<T>& v)
      : storage_(static_cast<T*>(::operator new((v.size() + 1) * sizeof(T), std::align_val_t{16}))) {
    std::copy(v.begin(), v.end(), data());
  }

  T* data() { return storage_.get() + 1; }
  const T* data() const { return storage_.get() + 1; }

 private:
  struct Free {
    void operator()(T* p) const { ::operator delete(p, std::align_val_t{16}); }
  };
  std::unique_ptr<T, Free> storage_;
};

// Which base pointer a check passes misaligned (Misaligned), the others as allocated. Output: the
// columns of im2col, the columns gradient of col2im; Gradient: col2im's input gradient; Columns: the
// columns col2im writes.
enum class Misalign { None, Input, Output, Weights, Gradient, Columns };

template <typename T>
double to_double(T v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
double to_double<double>(double v) {
  return v;
}

// ---------------------------------------------------------------------------------------------
// Comparison.

template <typename scalar_t>
struct Traits;
template <>
struct Traits<float> {
  using acc_t = float;
  static constexpr const char* name = "float";
  static constexpr double tol = 3e-5;
};
template <>
struct Traits<double> {
  using acc_t = double;
  static constexpr const char* name = "double";
  static constexpr double tol = 1e-11;
};
template <>
struct Traits<__half> {
  using acc_t = float;
  static constexpr const char* name = "half";
  static constexpr double tol = 2e-3;
};
template <>
struct Traits<__nv_bfloat16> {
  using acc_t = float;
  static constexpr const char* name = "bfloat16";
  static constexpr double tol = 1e-2;
};

// Compares got[i] with want[i] for i in [0, count); `where(i)` names an element. NaN never matches,
// an infinity only itself; the tolerance scales with the largest finite |want|.
template <typename Where>
int compare(const std::string& what, const std::vector<double>& got, const std::vector<double>& want, double tol,
            Where&& where) {
  double scale = 1.0;
  for (double w : want) {
    if (std::isfinite(w)) scale = std::max(scale, std::abs(w));
  }
  int bad = 0;
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = got[i] == want[i] ? 0.0 : std::abs(got[i] - want[i]);
    if (!(err <= tol * scale)) {
      if (bad < 5) {
        std::printf("    MISMATCH %s at %s: got %.9g, want %.9g\n", what.c_str(), where(i).c_str(), got[i], want[i]);
      }
      ++bad;
    } else {
      worst = std::max(worst, err / scale);
    }
  }
  if (bad != 0) std::printf("    %s: %d of %zu elements off (tolerance %.1e x %.3g)\n", what.c_str(), bad, want.size(), tol, scale);
  return bad;
}

// ---------------------------------------------------------------------------------------------
// Launch configurations.

struct Config {
  emu::Mode mode;
  unsigned block;
  int64_t max_grid;  // cap on the production grid (0: no cap)
  int64_t fixed_grid;  // a fixed grid instead (0: production)
  int64_t chunk;  // rows per launch instead of the problem's (0: the problem's)
};

std::string config_name(const Config& c, int64_t grid) {
  return emu::detail::format("%s grid %" PRId64 " block %u", emu::mode_name(c.mode), grid, c.block);
}

int64_t rows_per_launch(const Problem& p, const Config& c) {
  return c.chunk != 0 ? c.chunk : p.chunk != 0 ? p.chunk : p.shape.rows();
}

int64_t grid_for(const Config& c, int64_t work_items, int64_t items_per_block) {
  if (c.fixed_grid != 0) return c.fixed_grid;
  const int64_t production = std::max<int64_t>(1, (work_items + items_per_block - 1) / items_per_block);
  return c.max_grid != 0 ? std::min(production, c.max_grid) : production;
}

// ---------------------------------------------------------------------------------------------
// im2col.

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// misalign: Input or Output (the columns) passes that base one element past a 16-byte boundary.
template <typename scalar_t, typename index_t>
int check_im2col(const Problem& p, const Config& cfg, Misalign misalign = Misalign::None) {
  const auto start = std::chrono::steady_clock::now();
  using acc_t = typename Traits<scalar_t>::acc_t;
  const Shape& s = p.shape;
  const reference::Inputs in = make_inputs<scalar_t>(p);
  const reference::Outputs ref = reference::compute(in);
  const DeformConvGeometry g = geometry(p);
  const SamplingOperands<scalar_t> op(in);
  std::optional<Misaligned<scalar_t>> shifted_input;
  if (misalign == Misalign::Input) shifted_input.emplace(op.input);
  const scalar_t* input = shifted_input ? shifted_input->data() : op.input.data();
  const int64_t rows = s.rows(), width = s.row_width();
  const int64_t chunk = rows_per_launch(p, cfg);
  int bad = 0;
  std::string launched;
  int chosen_lanes = 0;  // the launcher's choice (kernels::lanes_per_sample)
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t len = std::min(chunk, rows - r0);
    // Every lane count a sample may get, whatever the launcher would choose here.
    for (const int lanes : {8, 16, 32}) {
      std::vector<scalar_t> aligned_columns(len * width,
                                            static_cast<scalar_t>(std::numeric_limits<float>::quiet_NaN()));
      std::optional<Misaligned<scalar_t>> shifted_columns;
      if (misalign == Misalign::Output) shifted_columns.emplace(aligned_columns);
      scalar_t* columns = shifted_columns ? shifted_columns->data() : aligned_columns.data();
      chosen_lanes =
          rcm_fsad::kernels::lanes_per_sample<scalar_t>(g, rcm_fsad::kernels::im2col_vectors(g, input, columns));
      const int64_t grid = grid_for(cfg, rcm_fsad::kernels::sample_warps(g, len, lanes), cfg.block / 32);
      if (launched.empty()) launched = config_name(cfg, grid);
      rcm_fsad::kernels::with_sample_lanes(lanes, [&](auto lanes_type) {
        emu::launch(cfg.mode, dim3(static_cast<unsigned>(grid)), dim3(cfg.block), 0,
                    rcm_fsad::kernels::deform_im2col_kernel<scalar_t, acc_t, index_t, decltype(lanes_type)::value>, g,
                    input, op.offset.data(), op.os, op.mask_ptr(), op.ms, r0, static_cast<index_t>(len), columns);
      });
      std::vector<double> got(len * width), want(len * width);
      for (int64_t i = 0; i < len * width; ++i) {
        got[i] = to_double(columns[i]);
        want[i] = ref.columns[r0 * width + i];
      }
      bad += compare("columns", got, want, Traits<scalar_t>::tol, [&](size_t i) {
        return emu::detail::format("row %" PRId64 " col %" PRId64 " [%s, %d lanes a sample]",
                                   r0 + static_cast<int64_t>(i) / width, static_cast<int64_t>(i) % width,
                                   config_name(cfg, grid).c_str(), lanes);
      });
    }
  }
  const char* shifted = misalign == Misalign::Input ? ", input misaligned" : misalign == Misalign::Output ? ", columns misaligned" : "";
  std::printf("  %s %-32s [%s, chunk %" PRId64 "%s; 8, 16 and 32 lanes a sample, the launcher's %d] %.2fs\n",
              bad ? "FAIL" : "ok  ", p.name, launched.c_str(), chunk, shifted, chosen_lanes, seconds_since(start));
  return bad;
}

// ---------------------------------------------------------------------------------------------
// col2im.

// One backward run: its mismatches against the reference, and its grad_input.
template <typename acc_t>
struct Col2imRun {
  int bad;
  std::vector<acc_t> grad_input;
};

// deterministic: deform_col2im_kernel with the grad_input scatter off (null), then for grad_input
// deform_sample_table_kernel, deform_sample_keys_kernel, a stable sort of the keys and the start of
// each key's run (std::stable_sort and std::lower_bound, where the CUDA backend takes PyTorch's sort and
// searchsorted) and deform_col2im_input_gather_kernel, as the CUDA backend does under
// torch.use_deterministic_algorithms.
// misalign: Input, Output (the columns gradient), Gradient (grad_input, with the scatter) or Columns
// (the columns it writes, poisoned with NaN first and compared with the reference's) passes that base one
// element past a 16-byte boundary. lanes: deform_col2im_kernel's lanes a sample (8, 16 or 32), or 0 for
// the launcher's choice (kernels::lanes_per_sample). with_columns false passes no columns (null).
template <typename scalar_t, typename index_t>
Col2imRun<typename Traits<scalar_t>::acc_t> check_col2im(const Problem& p, const Config& cfg, bool deterministic,
                                                         int lanes = 0, Misalign misalign = Misalign::None,
                                                         bool with_columns = true) {
  const auto start = std::chrono::steady_clock::now();
  using acc_t = typename Traits<scalar_t>::acc_t;
  const Shape& s = p.shape;
  const reference::Inputs in = make_inputs<scalar_t>(p);
  const reference::Outputs ref = reference::compute(in);
  const DeformConvGeometry g = geometry(p);
  const int64_t K = s.points(), G = s.offset_groups, oh = s.out_h(), ow = s.out_w();
  const SamplingOperands<scalar_t> op(in);
  // Gradient outputs in the same layout as their inputs, NaN everywhere (gaps included) first.
  const FieldLayout gol = field_layout(p.layout, s.N, 2 * G * K, oh, ow);
  const FieldLayout gml = field_layout(p.layout, s.N, G * K, oh, ow);
  const scalar_t nan = static_cast<scalar_t>(std::numeric_limits<float>::quiet_NaN());
  std::vector<scalar_t> grad_offset(gol.size, nan);
  std::vector<scalar_t> grad_mask(s.has_mask ? gml.size : 0, nan);
  const int64_t image_size = s.H * s.W * s.C;
  std::vector<acc_t> grad_input(s.N * image_size, acc_t(0));
  std::optional<Misaligned<scalar_t>> shifted_input;
  if (misalign == Misalign::Input) shifted_input.emplace(op.input);
  const scalar_t* input = shifted_input ? shifted_input->data() : op.input.data();
  std::optional<Misaligned<acc_t>> shifted_grad_input;
  if (misalign == Misalign::Gradient) shifted_grad_input.emplace(grad_input);
  acc_t* grad_input_ptr = shifted_grad_input ? shifted_grad_input->data() : grad_input.data();
  const int64_t rows = s.rows(), width = s.row_width();
  const int64_t chunk = rows_per_launch(p, cfg);
  std::string launched;
  std::string lanes_taken;  // by the first launch
  int unwritten_keys = 0;
  int column_mismatches = 0;
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t len = std::min(chunk, rows - r0);
    std::vector<scalar_t> aligned_grad_columns(len * width);
    for (int64_t i = 0; i < len * width; ++i) {
      aligned_grad_columns[i] = static_cast<scalar_t>(in.grad_columns[r0 * width + i]);
    }
    std::optional<Misaligned<scalar_t>> shifted_grad_columns;
    if (misalign == Misalign::Output) shifted_grad_columns.emplace(aligned_grad_columns);
    const scalar_t* grad_columns = shifted_grad_columns ? shifted_grad_columns->data() : aligned_grad_columns.data();
    std::vector<scalar_t> aligned_columns(len * width, nan);
    std::optional<Misaligned<scalar_t>> shifted_columns;
    if (misalign == Misalign::Columns) shifted_columns.emplace(aligned_columns);
    scalar_t* columns = !with_columns ? nullptr : shifted_columns ? shifted_columns->data() : aligned_columns.data();
    acc_t* scatter = deterministic ? nullptr : grad_input_ptr;
    const int launch_lanes =
        lanes != 0 ? lanes
                   : rcm_fsad::kernels::lanes_per_sample<scalar_t>(
                         g, rcm_fsad::kernels::col2im_vectors(g, input, grad_columns, scatter, columns));
    if (lanes_taken.empty()) lanes_taken = std::to_string(launch_lanes);
    const int64_t grid = grid_for(cfg, rcm_fsad::kernels::sample_warps(g, len, launch_lanes), cfg.block / 32);
    // Input-gradient elements of the images the rows of this launch touch.
    const int64_t elements = ((r0 + len - 1) / (oh * ow) - r0 / (oh * ow) + 1) * image_size;
    const int64_t elements_grid = grid_for(cfg, elements, cfg.block);
    if (launched.empty()) {
      launched = config_name(cfg, grid);
      if (deterministic) launched += emu::detail::format(", grad_input grid %" PRId64, elements_grid);
    }
    rcm_fsad::kernels::with_sample_lanes(launch_lanes, [&](auto lanes_type) {
      emu::launch(cfg.mode, dim3(static_cast<unsigned>(grid)), dim3(cfg.block), 0,
                  rcm_fsad::kernels::deform_col2im_kernel<scalar_t, acc_t, index_t, decltype(lanes_type)::value>, g,
                  input, op.offset.data(), op.os, op.mask_ptr(), op.ms, r0, static_cast<index_t>(len), grad_columns,
                  scatter, grad_offset.data(), gol.strides, s.has_mask ? grad_mask.data() : nullptr,
                  s.has_mask ? gml.strides : FieldStrides{0, 0, 0, 0}, columns);
    });
    // The columns, against the reference and against the very values deform_im2col_kernel writes (its
    // launch as the forward's columns path makes it).
    if (with_columns) {
      std::vector<double> got_columns(len * width), want_columns(len * width);
      for (int64_t i = 0; i < len * width; ++i) {
        got_columns[i] = to_double(columns[i]);
        want_columns[i] = ref.columns[r0 * width + i];
      }
      const auto column_where = [&](size_t i) {
        return emu::detail::format("row %" PRId64 " col %" PRId64, r0 + static_cast<int64_t>(i) / width,
                                   static_cast<int64_t>(i) % width);
      };
      column_mismatches += compare("columns", got_columns, want_columns, Traits<scalar_t>::tol, column_where);
      std::vector<scalar_t> im2col_columns(len * width);
      const int im2col_lanes = rcm_fsad::kernels::lanes_per_sample<scalar_t>(
          g, rcm_fsad::kernels::im2col_vectors(g, input, im2col_columns.data()));
      const int64_t im2col_grid = grid_for(cfg, rcm_fsad::kernels::sample_warps(g, len, im2col_lanes), cfg.block / 32);
      rcm_fsad::kernels::with_sample_lanes(im2col_lanes, [&](auto lanes_type) {
        emu::launch(cfg.mode, dim3(static_cast<unsigned>(im2col_grid)), dim3(cfg.block), 0,
                    rcm_fsad::kernels::deform_im2col_kernel<scalar_t, acc_t, index_t, decltype(lanes_type)::value>, g,
                    input, op.offset.data(), op.os, op.mask_ptr(), op.ms, r0, static_cast<index_t>(len),
                    im2col_columns.data());
      });
      std::vector<double> im2col_values(len * width);
      for (int64_t i = 0; i < len * width; ++i) im2col_values[i] = to_double(im2col_columns[i]);
      column_mismatches += compare("columns against im2col's", got_columns, im2col_values, 0.0, column_where);
    }
    if (deterministic) {
      std::vector<rcm_fsad::kernels::MaskedCorners<acc_t>> table(len * K * G);
      emu::launch(cfg.mode, dim3(static_cast<unsigned>(grid_for(cfg, len * K * G, cfg.block))), dim3(cfg.block), 0,
                  rcm_fsad::kernels::deform_sample_table_kernel<scalar_t, acc_t, index_t>, g, op.offset.data(),
                  op.os, op.mask_ptr(), op.ms, r0, static_cast<index_t>(len), table.data());
      // Poisoned: a key the kernel leaves unwritten would read as a corner of pixel 0.
      constexpr int64_t kPoison = std::numeric_limits<int64_t>::min();
      std::vector<int64_t> keys(4 * table.size(), kPoison);
      emu::launch(cfg.mode, dim3(static_cast<unsigned>(grid_for(cfg, 4 * len * K * G, cfg.block))), dim3(cfg.block),
                  0, rcm_fsad::kernels::deform_sample_keys_kernel<acc_t, index_t>, g, table.data(),
                  static_cast<index_t>(table.size()), keys.data());
      if (std::count(keys.begin(), keys.end(), kPoison) != 0) {
        std::printf("    MISMATCH %s: deform_sample_keys_kernel left keys unwritten\n", p.name);
        ++unwritten_keys;
      }
      std::vector<int64_t> order(keys.size()), sorted(keys.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
      for (size_t i = 0; i < order.size(); ++i) sorted[i] = keys[order[i]];
      // The keys of the images this launch's rows belong to, and one past them.
      const int64_t image_keys = s.H * s.W * G, key0 = r0 / (oh * ow) * image_keys;
      std::vector<int64_t> starts(elements / s.C * G + 1);
      for (size_t run = 0; run < starts.size(); ++run) {
        const int64_t key = key0 + static_cast<int64_t>(run);
        starts[run] = std::lower_bound(sorted.begin(), sorted.end(), key) - sorted.begin();
      }
      emu::launch(cfg.mode, dim3(static_cast<unsigned>(elements_grid)), dim3(cfg.block), 0,
                  rcm_fsad::kernels::deform_col2im_input_gather_kernel<scalar_t, acc_t, index_t>, g, table.data(),
                  order.data(), sorted.data(), starts.data(), r0, static_cast<index_t>(len), grad_columns,
                  grad_input_ptr);
    }
  }
  if (shifted_grad_input) std::copy(grad_input_ptr, grad_input_ptr + grad_input.size(), grad_input.begin());
  int bad = unwritten_keys + column_mismatches;
  {
    std::vector<double> got(s.N * image_size);
    for (size_t i = 0; i < got.size(); ++i) got[i] = to_double(grad_input[i]);
    bad += compare("grad_input", got, ref.grad_input, Traits<scalar_t>::tol, [&](size_t i) {
      const int64_t c = static_cast<int64_t>(i) % s.C, pix = static_cast<int64_t>(i) / s.C;
      return emu::detail::format("n %" PRId64 " y %" PRId64 " x %" PRId64 " c %" PRId64, pix / (s.H * s.W),
                                 pix / s.W % s.H, pix % s.W, c);
    });
  }
  // A logical (n, c, y, x) field read back through its layout; every gap must still be NaN.
  auto gather = [&](const std::vector<scalar_t>& buffer, const FieldLayout& l, int64_t channels,
                    const char* what) -> std::vector<double> {
    std::vector<double> out(s.N * channels * oh * ow);
    std::vector<bool> logical(buffer.size(), false);
    for (int64_t n = 0; n < s.N; ++n) {
      for (int64_t c = 0; c < channels; ++c) {
        for (int64_t y = 0; y < oh; ++y) {
          for (int64_t x = 0; x < ow; ++x) {
            const int64_t at = l.strides.at(n, c, y, x);
            out[((n * channels + c) * oh + y) * ow + x] = to_double(buffer[at]);
            logical[at] = true;
          }
        }
      }
    }
    for (size_t i = 0; i < buffer.size(); ++i) {
      if (!logical[i] && !std::isnan(to_double(buffer[i]))) {
        std::printf("    MISMATCH %s: element %zu of the buffer, a gap of its layout, was written\n", what, i);
        ++bad;
        break;
      }
    }
    return out;
  };
  auto field_where = [&](int64_t channels) {
    return [=](size_t i) {
      const int64_t x = static_cast<int64_t>(i) % ow, y = static_cast<int64_t>(i) / ow % oh;
      const int64_t c = static_cast<int64_t>(i) / (ow * oh) % channels, n = static_cast<int64_t>(i) / (ow * oh * channels);
      return emu::detail::format("n %" PRId64 " channel %" PRId64 " (kernel point %" PRId64 ") oy %" PRId64
                                 " ox %" PRId64, n, c, channels == 2 * G * K ? c / 2 % K : c % K, y, x);
    };
  };
  bad += compare("grad_offset", gather(grad_offset, gol, 2 * G * K, "grad_offset"), ref.grad_offset,
                 Traits<scalar_t>::tol, field_where(2 * G * K));
  if (s.has_mask) {
    bad += compare("grad_mask", gather(grad_mask, gml, G * K, "grad_mask"), ref.grad_mask, Traits<scalar_t>::tol,
                   field_where(G * K));
  }
  const char* shifted = misalign == Misalign::Input      ? ", input misaligned"
                        : misalign == Misalign::Output   ? ", columns gradient misaligned"
                        : misalign == Misalign::Gradient ? ", grad_input misaligned"
                        : misalign == Misalign::Columns  ? ", columns misaligned"
                                                         : "";
  std::printf("  %s %-32s [%s, %s lanes a sample, chunk %" PRId64 ", %s fields%s%s] %.2fs\n", bad ? "FAIL" : "ok  ",
              p.name, launched.c_str(), lanes_taken.c_str(), chunk, layout_name(p.layout), shifted,
              with_columns ? "" : ", no columns", seconds_since(start));
  return {bad, std::move(grad_input)};
}

// The deterministic backward under each configuration against the reference, and its grad_input
// the same bit for bit under all of them (which the atomic scatter cannot promise).
template <typename scalar_t, typename index_t>
int check_col2im_deterministic(const Problem& p, const std::vector<Config>& configs) {
  using acc_t = typename Traits<scalar_t>::acc_t;
  std::vector<Col2imRun<acc_t>> runs;
  int bad = 0;
  for (const Config& c : configs) {
    runs.push_back(check_col2im<scalar_t, index_t>(p, c, /*deterministic=*/true));
    bad += runs.back().bad;
  }
  for (size_t i = 1; i < runs.size(); ++i) {
    const std::vector<acc_t>& first = runs[0].grad_input;
    const std::vector<acc_t>& other = runs[i].grad_input;
    for (size_t e = 0; e < first.size(); ++e) {
      if (std::memcmp(&first[e], &other[e], sizeof(acc_t)) != 0) {
        std::printf("    MISMATCH %s: grad_input element %zu differs bitwise between launch configurations 1 "
                    "and %zu: %.17g vs %.17g\n", p.name, e, i + 1, to_double(first[e]), to_double(other[e]));
        ++bad;
        break;
      }
    }
  }
  return bad;
}

// ---------------------------------------------------------------------------------------------
// Implicit-GEMM forward kernels.

// Inputs made positive and given an infinite mask at every third sample whose four corners lie in
// the image, off integer coordinates (so that all four bilinear weights are positive). With positive
// weights too, every output of those rows is +inf, whether the mask multiplies the sample (the
// reference, torchvision) or each corner's weight (the kernels), and no other output changes: a
// kernel that lets the infinity meet a zero (0 * inf = NaN) shows it there.
reference::Inputs with_infinite_mask(reference::Inputs in) {
  const Shape& s = in.s;
  for (double& v : in.image) v = std::abs(v);
  const int64_t K = s.points();
  int64_t inner = 0;
  for (int64_t row = 0; row < s.rows(); ++row) {
    for (int64_t g = 0; g < s.offset_groups; ++g) {
      for (int64_t k = 0; k < K; ++k) {
        const reference::Tap t = reference::tap(in, row, k, g);
        auto inside = [](double v, int64_t extent) {
          return std::isfinite(v) && v > 0.0 && v < static_cast<double>(extent - 1) && v != std::floor(v);
        };
        if (inside(t.y, s.H) && inside(t.x, s.W) && inner++ % 3 == 0) {
          in.mask.at(t.n, g * K + k, t.oy, t.ox) = std::numeric_limits<double>::infinity();
        }
      }
    }
  }
  return in;
}

// A forward problem's operands as the launcher passes them, and the float64 reference output;
// infinite_mask: with_infinite_mask's inputs and positive weights.
template <typename scalar_t>
struct ForwardOperands {
  reference::Inputs in;
  SamplingOperands<scalar_t> sampling;
  std::vector<double> weight;  // (C_out, C_g, kh, kw)
  std::vector<double> bias;    // (C_out) or empty
  std::vector<scalar_t> bias_device;
  std::vector<scalar_t> wmat;  // the GEMM operand of weight_matrix(): (C_out, kh, kw, C_g)
  std::vector<double> want;    // (rows, C_out)

  explicit ForwardOperands(const Problem& p, bool infinite_mask = false)
      : in(infinite_mask ? with_infinite_mask(make_inputs<scalar_t>(p)) : make_inputs<scalar_t>(p)), sampling(in) {
    const Shape& s = p.shape;
    const int64_t cout = p.out_channels, cg = s.C / s.groups, K = s.points();
    Rng rng{p.seed * 31u + 5u};
    weight.resize(cout * cg * K);
    bias.resize(p.seed % 2 == 1 ? cout : 0);
    for (double& w : weight) w = through<scalar_t>(infinite_mask ? rng.uniform(0.01, 0.5) : rng.uniform(-0.5, 0.5));
    for (double& b : bias) b = through<scalar_t>(rng.uniform(-1.0, 1.0));
    want = reference::forward(in, reference::compute(in), cout, weight, bias);
    bias_device = to_device<scalar_t>(bias);
    wmat.resize(cout * K * cg);
    for (int64_t co = 0; co < cout; ++co) {
      for (int64_t cl = 0; cl < cg; ++cl) {
        for (int64_t k = 0; k < K; ++k) {
          wmat[(co * K + k) * cg + cl] = static_cast<scalar_t>(weight[((co * cg + cl) * s.kh + k / s.kw) * s.kw + k % s.kw]);
        }
      }
    }
  }

  const scalar_t* bias_ptr() const { return bias.empty() ? nullptr : bias_device.data(); }
};

// Launches a forward kernel over `grid` (block `threads`, one block at a time, each with
// `shared_bytes` of dynamic shared memory, 0xFF-filled) into a NaN-filled output, as the launcher
// does: split over kernel points when grid.y > 1, into NaN-filled partial sums of partial_t, then
// deform_conv2d_split_sum_kernel. `input`: op.sampling.input or a copy; `weights`: op.wmat, a copy,
// or what the kernel takes in its place. Returns the output as doubles.
template <typename scalar_t, typename partial_t, typename Kernel>
std::vector<double> run_forward(const Problem& p, const ForwardOperands<scalar_t>& op, const scalar_t* input,
                                const scalar_t* weights, dim3 grid, int threads, Kernel kernel, size_t shared_bytes) {
  const int64_t elements = p.shape.rows() * p.out_channels;
  const int splits = static_cast<int>(grid.y);
  std::vector<scalar_t> out(elements, static_cast<scalar_t>(std::numeric_limits<float>::quiet_NaN()));
  std::vector<partial_t> partials(splits > 1 ? splits * elements : 0, std::numeric_limits<partial_t>::quiet_NaN());
  emu::launch(emu::Mode::BlockByBlock, grid, dim3(threads), shared_bytes, kernel, geometry(p), input,
              op.sampling.offset.data(), op.sampling.os, op.sampling.mask_ptr(), op.sampling.ms, weights,
              op.bias_ptr(), out.data(), splits > 1 ? partials.data() : nullptr);
  if (splits > 1) {
    emu::launch(emu::Mode::BlockByBlock, dim3(3), dim3(64), 0,
                rcm_fsad::kernels::deform_conv2d_split_sum_kernel<scalar_t, partial_t>, elements, p.out_channels,
                splits, partials.data(), op.bias_ptr(), out.data());
  }
  std::vector<double> got(out.size());
  for (size_t i = 0; i < out.size(); ++i) got[i] = to_double(out[i]);
  return got;
}

template <typename Tiles>
dim3 forward_grid(const Problem& p, int splits = 1) {
  const int64_t blocks = rcm_fsad::kernels::gemm_grid_x<Tiles::kRows, Tiles::kCols>(geometry(p));
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(splits), static_cast<unsigned>(p.shape.groups));
}

// The kernel-point splits each forward kernel is also run with: 2 (uneven halves for an odd
// kernel size) and one kernel point per split.
std::vector<int> split_counts(const Problem& p) {
  const int points = static_cast<int>(p.shape.points());
  return points >= 3 ? std::vector<int>{2, points} : std::vector<int>{points};
}

auto out_element(const Problem& p) {
  return [cout = p.out_channels](size_t i) {
    return emu::detail::format("row %" PRId64 " out channel %" PRId64, static_cast<int64_t>(i) / cout,
                               static_cast<int64_t>(i) % cout);
  };
}

void report_forward(int bad, const Problem& p, dim3 grid, int threads, const char* extra,
                    std::chrono::steady_clock::time_point start) {
  std::printf("  %s %-32s [BlockByBlock grid (%u,%u,%u) block %d, C_out %" PRId64 ", %s%s] %.2fs\n", bad ? "FAIL" : "ok  ",
              p.name, grid.x, grid.y, grid.z, threads, p.out_channels, p.seed % 2 == 1 ? "bias" : "no bias", extra,
              seconds_since(start));
}

size_t infinities(const std::vector<double>& want) {
  return static_cast<size_t>(std::count_if(want.begin(), want.end(), [](double w) { return std::isinf(w); }));
}

// An infinite-mask check proves something only if the reference has some infinite outputs and some
// finite ones: 1 (a failure) otherwise.
int check_infinities(const std::vector<double>& want) {
  const size_t n = infinities(want);
  if (n != 0 && n != want.size()) return 0;
  std::printf("    the infinite mask reaches %zu of %zu outputs: the problem does not test it\n", n, want.size());
  return 1;
}

std::string infinity_note(bool infinite_mask, const std::vector<double>& want) {
  return infinite_mask ? emu::detail::format(", infinite mask: %zu of %zu outputs +inf", infinities(want), want.size())
                       : std::string();
}

// Unsplit and with each of split_counts() (unsplit only with infinite_mask, ForwardOperands' inputs),
// with element fills, and with 16-byte ones where the launcher takes them (every run of channels
// whole vectors).
template <typename scalar_t>
int check_igemm(const Problem& p, bool infinite_mask = false) {
  namespace kernels = rcm_fsad::kernels;  // spelled kernels:: for check_coverage.cmake
  using acc_t = typename Traits<scalar_t>::acc_t;
  using Tiles = kernels::ImplicitGemmTiles<acc_t>;
  const ForwardOperands<scalar_t> op(p, infinite_mask);
  std::vector<int> splits = infinite_mask ? std::vector<int>{} : split_counts(p);
  splits.insert(splits.begin(), 1);
  const bool vectors = geometry(p).channel_runs_are_multiples_of(kernels::Vector16<scalar_t>::kSize);
  int bad = 0;
  for (int split : splits) {
    for (const bool vector_fills : {false, true}) {
      if (vector_fills && !vectors) continue;
      const auto start = std::chrono::steady_clock::now();
      const dim3 grid = forward_grid<Tiles>(p, split);
      const std::vector<double> got =
          vector_fills
              ? run_forward<scalar_t, acc_t>(p, op, op.sampling.input.data(), op.wmat.data(), grid, Tiles::kThreads,
                                             kernels::deform_conv2d_implicit_gemm_kernel<scalar_t, acc_t, true>,
                                             kernels::implicit_gemm_shared_bytes<acc_t>())
              : run_forward<scalar_t, acc_t>(p, op, op.sampling.input.data(), op.wmat.data(), grid, Tiles::kThreads,
                                             kernels::deform_conv2d_implicit_gemm_kernel<scalar_t, acc_t, false>,
                                             kernels::implicit_gemm_shared_bytes<acc_t>());
      const int b = compare("out", got, op.want, Traits<scalar_t>::tol, out_element(p)) +
                    (infinite_mask ? check_infinities(op.want) : 0);
      const std::string extra = std::string(", CUDA cores ") + Traits<scalar_t>::name +
                                (vector_fills ? ", 16-byte fills" : "") + infinity_note(infinite_mask, op.want);
      report_forward(b, p, grid, Tiles::kThreads, extra.c_str(), start);
      bad += b;
    }
  }
  return bad;
}

// The value the MMAs read for x in the tensor-core input type mma_t: for Tf32Split the sum of its
// two TF32 parts, x rounded to TF32 and the remainder rounded to TF32.
template <typename mma_t>
double mma_rounded(double x) {
  if constexpr (std::is_same_v<mma_t, rcm_fsad::kernels::Tf32>) {
    return nvcuda::wmma::__float_to_tf32(static_cast<float>(x));
  } else if constexpr (std::is_same_v<mma_t, rcm_fsad::kernels::Tf32Split>) {
    const float big = nvcuda::wmma::__float_to_tf32(static_cast<float>(x));
    return static_cast<double>(big) + nvcuda::wmma::__float_to_tf32(static_cast<float>(x) - big);
  } else {
    return static_cast<float>(static_cast<mma_t>(static_cast<float>(x)));
  }
}

// A tensor-core kernel's weights as the launcher repacks them, `elements` of them by `repack` (a small
// grid: several grid-stride rounds), into a NaN-filled buffer, so that an element the repacking misses
// poisons the output.
template <typename scalar_t, typename Repack>
std::vector<scalar_t> repacked_weights(Repack repack, const Problem& p, const ForwardOperands<scalar_t>& op,
                                       int64_t elements) {
  std::vector<scalar_t> out(elements, static_cast<scalar_t>(std::numeric_limits<float>::quiet_NaN()));
  emu::launch(emu::Mode::BlockByBlock, dim3(3), dim3(64), 0, repack, geometry(p), op.wmat.data(), out.data());
  return out;
}

// The tensor-core forward, judged like a low-precision kernel should be: against the float64
// reference with the dtype's tolerance, and its error against the error of a reference that rounds
// what the kernel rounds (the sampled columns and the weights to mma_t, the output to scalar_t) and
// computes the rest in float64.
// The kernel may only add float accumulation error to the operand rounding: at most 1.25 times the
// latter plus 1e-5 of the output's scale. (The GPU tests allow twice; here the MMA's products are
// exact and its sums in float, and 1.25 still catches operands truncated instead of rounded.)
// The tensor-core kernels, each launched as the launcher does.
enum class TensorCoreKernel { Wmma, WmmaAsync, Mma, Wgmma };

const char* kernel_name(TensorCoreKernel k) {
  return k == TensorCoreKernel::Wmma ? "wmma" : k == TensorCoreKernel::WmmaAsync ? "wmma_async"
                                     : k == TensorCoreKernel::Mma               ? "mma"
                                                                                : "wgmma";
}

// The multiplications' type, as the case names spell it.
template <typename scalar_t, typename mma_t>
const char* mma_type_name() {
  if constexpr (std::is_same_v<mma_t, rcm_fsad::kernels::Tf32>) return "tf32";
  if constexpr (std::is_same_v<mma_t, rcm_fsad::kernels::Tf32Split>) return "tf32_split";
  return Traits<scalar_t>::name;
}

// The tolerance of a tensor-core forward against the float64 reference (split TF32: float's).
template <typename scalar_t, typename mma_t>
double tensor_core_tolerance() {
  return std::is_same_v<mma_t, rcm_fsad::kernels::Tf32> ? 2e-3 : Traits<scalar_t>::tol;
}

// The forward computed as a float32 GEMM would: the columns rounded to float, and each output's sum
// of float products in float (one rounding per multiply-add, in the reference's order). Also the
// largest sum of the terms' magnitudes, sum |w x column| + |bias|, over the finite outputs: what a
// float32 error bound is a multiple of.
struct Float32Forward {
  std::vector<double> out;
  double magnitude = 0.0;
};
Float32Forward float32_forward(const reference::Inputs& in, const reference::Outputs& o, int64_t out_channels,
                               const std::vector<double>& weight, const std::vector<double>& bias) {
  const Shape& s = in.s;
  const int64_t K = s.points(), cg = s.C / s.groups, cog = out_channels / s.groups;
  Float32Forward f{std::vector<double>(s.rows() * out_channels), 0.0};
  for (int64_t row = 0; row < s.rows(); ++row) {
    for (int64_t co = 0; co < out_channels; ++co) {
      const int64_t group = co / cog;
      float sum = bias.empty() ? 0.0f : static_cast<float>(bias[co]);
      double magnitude = std::abs(sum);
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t cl = 0; cl < cg; ++cl) {
          const float w = static_cast<float>(weight[((co * cg + cl) * s.kh + k / s.kw) * s.kw + k % s.kw]);
          const float c = static_cast<float>(o.columns[row * s.row_width() + s.column(group * cg + cl, k)]);
          sum = std::fma(w, c, sum);
          magnitude += std::abs(static_cast<double>(w) * c);
        }
      }
      f.out[row * out_channels + co] = sum;
      if (std::isfinite(magnitude)) f.magnitude = std::max(f.magnitude, magnitude);
    }
  }
  return f;
}

// Split TF32 must be as accurate as float32. Two parts hold an operand to 2^-22 of itself, and a
// product without small x small is off by at most 3 x 2^-22 = 12 u of itself (u = 2^-24): 12 u of
// the terms' magnitude in all. Beyond that its error against the float64 result may be at most twice
// that of float32_forward: the sums in float (three products a term, in a different order), and the
// sampling's float arithmetic, which float32_forward leaves out (its columns are rounded once). That
// part of the bound is calibrated against float32's own error, not derived. One TF32 part alone, or
// a cross term left out, is off by about 2^-12 of the terms: hundreds of times the bound.
int check_float32_accuracy(const ForwardOperands<float>& op, const Problem& p, const std::vector<double>& got,
                           std::string& note) {
  const Float32Forward in_float = float32_forward(op.in, reference::compute(op.in), p.out_channels, op.weight, op.bias);
  double kernel_error = 0.0, float_error = 0.0;
  for (size_t i = 0; i < op.want.size(); ++i) {
    if (!std::isfinite(op.want[i])) continue;
    kernel_error = std::max(kernel_error, std::abs(got[i] - op.want[i]));
    float_error = std::max(float_error, std::abs(in_float.out[i] - op.want[i]));
  }
  const double split = 12.0 * std::ldexp(in_float.magnitude, -24);
  note += emu::detail::format(", float32's error %.2g", float_error);
  if (kernel_error <= 2.0 * float_error + split) return 0;
  std::printf("    kernel error %.3g exceeds 2 x float32's error %.3g + the split's %.3g\n", kernel_error, float_error,
              split);
  return 1;
}

// kCols: the block width (WMMA and wgmma kernels) or the warp width (the mma.sync kernel, with
// kWarpsAlongCols warps along the columns). infinite_mask: on with_infinite_mask's inputs, whose
// infinite outputs are left out of the error statistics.
template <typename scalar_t, typename mma_t, int kCols, TensorCoreKernel kKernel, int kWarpsAlongCols = 1>
int check_igemm_tensor_cores(const Problem& p, int splits, bool infinite_mask = false) {
  namespace kernels = rcm_fsad::kernels;  // spelled kernels:: for check_coverage.cmake
  const auto start = std::chrono::steady_clock::now();
  using Tiles = std::conditional_t<
      kKernel == TensorCoreKernel::Mma, kernels::MmaTiles<kCols, kWarpsAlongCols>,
      std::conditional_t<kKernel == TensorCoreKernel::Wgmma, kernels::WgmmaTiles<kCols>, kernels::WmmaTiles<kCols>>>;
  const ForwardOperands<scalar_t> op(p, infinite_mask);
  const dim3 grid = forward_grid<Tiles>(p, splits);
  std::vector<double> got;
  if constexpr (kKernel == TensorCoreKernel::WmmaAsync) {
    got = run_forward<scalar_t, float>(p, op, op.sampling.input.data(), op.wmat.data(), grid, Tiles::kThreads,
                                       kernels::deform_conv2d_implicit_gemm_wmma_async_kernel<scalar_t, mma_t, kCols>,
                                       kernels::wmma_async_shared_bytes<scalar_t, kCols>());
  } else if constexpr (kKernel == TensorCoreKernel::Mma) {
    const std::vector<scalar_t> fragments =
        repacked_weights<scalar_t>(kernels::deform_conv2d_mma_weight_fragments_kernel<scalar_t, mma_t>, p, op,
                                   kernels::mma_weight_buffer_elements<scalar_t, mma_t>(geometry(p)));
    got = run_forward<scalar_t, float>(p, op, op.sampling.input.data(), fragments.data(), grid, Tiles::kThreads,
                                       kernels::deform_conv2d_implicit_gemm_mma_kernel<scalar_t, mma_t, kCols, kWarpsAlongCols>,
                                       kernels::mma_shared_bytes<Tiles, mma_t>());
  } else if constexpr (kKernel == TensorCoreKernel::Wgmma) {
    const std::vector<scalar_t> tiles =
        repacked_weights<scalar_t>(kernels::deform_conv2d_wgmma_weight_tiles_kernel<scalar_t, mma_t>, p, op,
                                   kernels::wgmma_weight_buffer_elements<scalar_t, mma_t>(geometry(p)));
    got = run_forward<scalar_t, float>(p, op, op.sampling.input.data(), tiles.data(), grid, Tiles::kThreads,
                                       kernels::deform_conv2d_implicit_gemm_wgmma_kernel<scalar_t, mma_t, kCols>,
                                       kernels::wgmma_shared_bytes<kCols, mma_t>());
  } else {
    got = run_forward<scalar_t, float>(p, op, op.sampling.input.data(), op.wmat.data(), grid, Tiles::kThreads,
                                       kernels::deform_conv2d_implicit_gemm_wmma_kernel<scalar_t, mma_t, kCols>,
                                       kernels::wmma_shared_bytes<scalar_t, kCols>());
  }
  int bad = compare("out", got, op.want, tensor_core_tolerance<scalar_t, mma_t>(), out_element(p)) +
            (infinite_mask ? check_infinities(op.want) : 0);

  reference::Outputs rounded = reference::compute(op.in);
  for (double& c : rounded.columns) c = mma_rounded<mma_t>(c);
  std::vector<double> weight = op.weight;
  for (double& w : weight) w = mma_rounded<mma_t>(w);
  std::vector<double> same_precision = reference::forward(op.in, rounded, p.out_channels, weight, op.bias);
  for (double& v : same_precision) v = through<scalar_t>(v);
  double scale = 1.0, kernel_error = 0.0, rounding_error = 0.0;
  for (size_t i = 0; i < op.want.size(); ++i) {
    if (!std::isfinite(op.want[i])) continue;
    scale = std::max(scale, std::abs(op.want[i]));
    kernel_error = std::max(kernel_error, std::abs(got[i] - op.want[i]));
    rounding_error = std::max(rounding_error, std::abs(same_precision[i] - op.want[i]));
  }
  const bool within = kernel_error <= 1.25 * rounding_error + 1e-5 * scale;
  if (!within) {
    std::printf("    kernel error %.3g exceeds 1.25 x the operand-rounding error %.3g + 1e-5 x %.3g\n", kernel_error,
                rounding_error, scale);
    ++bad;
  }
  std::string errors = emu::detail::format(", %s %s %d wide, error %.2g vs rounding %.2g", kernel_name(kKernel),
                                           mma_type_name<scalar_t, mma_t>(), kCols * kWarpsAlongCols, kernel_error,
                                           rounding_error);
  if constexpr (std::is_same_v<mma_t, rcm_fsad::kernels::Tf32Split>) bad += check_float32_accuracy(op, p, got, errors);
  errors += infinity_note(infinite_mask, op.want);
  report_forward(bad, p, grid, Tiles::kThreads, errors.c_str(), start);
  return bad;
}

// The WMMA kernel with synchronous loads picks its 16-byte fills at run time, for the input and the
// weights apart: from a base one element past a 16-byte boundary (misalign: Input or Weights) it
// fills element by element.
template <typename scalar_t, typename mma_t, int kCols>
int check_wmma_misaligned(const Problem& p, Misalign misalign) {
  namespace kernels = rcm_fsad::kernels;  // spelled kernels:: for check_coverage.cmake
  const auto start = std::chrono::steady_clock::now();
  using Tiles = kernels::WmmaTiles<kCols>;
  const ForwardOperands<scalar_t> op(p);
  const Misaligned<scalar_t> shifted(misalign == Misalign::Input ? op.sampling.input : op.wmat);
  const dim3 grid = forward_grid<Tiles>(p);
  const std::vector<double> got = run_forward<scalar_t, float>(
      p, op, misalign == Misalign::Input ? shifted.data() : op.sampling.input.data(),
      misalign == Misalign::Weights ? shifted.data() : op.wmat.data(), grid, Tiles::kThreads,
      kernels::deform_conv2d_implicit_gemm_wmma_kernel<scalar_t, mma_t, kCols>,
      kernels::wmma_shared_bytes<scalar_t, kCols>());
  const int bad = compare("out", got, op.want, tensor_core_tolerance<scalar_t, mma_t>(), out_element(p));
  report_forward(bad, p, grid, Tiles::kThreads, misalign == Misalign::Input ? ", input misaligned" : ", weights misaligned",
                 start);
  return bad;
}

// ---------------------------------------------------------------------------------------------
// Cases.

// Launch configurations. Production: 256 threads, the launcher's grid (capped: a grid-stride loop
// covers the rest). AllBlocks: every thread of 3 blocks at once (races between blocks, and between
// the 2 warps of a block). Small: an odd block size or a tiny grid (several grid-stride rounds).
const Config kProduction{emu::Mode::BlockByBlock, 256, 8, 0, 0};
const Config kAllBlocks{emu::Mode::AllBlocks, 64, 0, 3, 0};
const Config kSmallIm2col{emu::Mode::BlockByBlock, 96, 0, 2, 0};
const Config kSmallCol2im{emu::Mode::BlockByBlock, 64, 0, 3, 0};
// For the deterministic backward: one warp does all the work, in launches of 5 rows (a launch
// straddles two images in the 2-image problems).
const Config kOneWarpChunked{emu::Mode::BlockByBlock, 32, 0, 1, 5};

// Under ThreadSanitizer every synchronisation costs in proportion to the number of threads the
// process has had, and the emulated warp collectives are nothing but synchronisation: the TSan build
// runs AllBlocks (the race-finding configuration) on every problem, and for the two primary
// instantiations (float/int32, double/int64) the production launch on one problem, last (so that the
// thread pool only grows to 256 threads at the end). The other builds run every configuration.
#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif

template <typename scalar_t, typename index_t>
int run_kernel_case(const std::string& kernel) {
  int bad = 0;
  if (kernel == "col2im_deterministic") {
    // Under TSan, AllBlocks and the one-warp launch (32 threads: cheap), so that the bitwise
    // comparison runs there too.
    const std::vector<Config> configs =
        kThreadSanitizer ? std::vector<Config>{kAllBlocks, kOneWarpChunked}
                         : std::vector<Config>{kProduction, kAllBlocks, kSmallCol2im, kOneWarpChunked};
    for (const Problem& p : problems()) bad += check_col2im_deterministic<scalar_t, index_t>(p, configs);
    return bad;
  }
  const bool im2col = kernel == "im2col";
  // col2im with every lane count a sample may get, whatever the launcher would choose (im2col runs
  // them all itself).
  auto check = [&](const Problem& p, const Config& c) {
    if (im2col) return check_im2col<scalar_t, index_t>(p, c);
    int bad_lanes = 0;
    for (const int lanes : {8, 16, 32}) bad_lanes += check_col2im<scalar_t, index_t>(p, c, false, lanes).bad;
    return bad_lanes;
  };
  if (kThreadSanitizer) {
    constexpr bool primary = (std::is_same_v<scalar_t, float> && std::is_same_v<index_t, int32_t>) ||
                             (std::is_same_v<scalar_t, double> && std::is_same_v<index_t, int64_t>);
    std::printf("  (ThreadSanitizer build: AllBlocks on every problem%s)\n",
                primary ? ", the production launch on the last" : "");
    for (const Problem& p : problems()) bad += check(p, kAllBlocks);
    if (primary) bad += check(problems().back(), kProduction);
    return bad;
  }
  for (const Problem& p : problems()) {
    for (const Config& c : {kProduction, kAllBlocks, im2col ? kSmallIm2col : kSmallCol2im}) bad += check(p, c);
  }
  // Runs of whole vectors, which im2col and col2im read and write 16 bytes at a time, from an input, a
  // columns (gradient) or an input gradient that does not start on a vector: one element at a time
  // instead.
  const Problem& p = problem_named(problems(), "vector_runs_c160_groups2");
  if (!geometry(p).channel_runs_are_multiples_of(rcm_fsad::kernels::Vector16<scalar_t>::kSize)) {
    std::printf("  FAIL %s: its runs of channels are not whole vectors\n", p.name);
    ++bad;
  }
  if (im2col) {
    for (const Misalign m : {Misalign::Input, Misalign::Output}) bad += check_im2col<scalar_t, index_t>(p, kSmallIm2col, m);
  } else {
    for (const Misalign m : {Misalign::Input, Misalign::Output, Misalign::Gradient, Misalign::Columns}) {
      bad += check_col2im<scalar_t, index_t>(p, kSmallCol2im, /*deterministic=*/false, /*lanes=*/0, m).bad;
    }
    // And without columns to write: the same gradients.
    bad += check_col2im<scalar_t, index_t>(p, kSmallCol2im, false, 0, Misalign::None, /*with_columns=*/false).bad;
  }
  return bad;
}

template <typename scalar_t>
int dispatch_index(const std::string& kernel, const std::string& index) {
  if (index == "int32") return run_kernel_case<scalar_t, int32_t>(kernel);
  return run_kernel_case<scalar_t, int64_t>(kernel);
}

// The reference's gradients against finite differences of its own forward: central differences at
// non-integer positions, forward differences (the right derivative) at integer ones, the -1 border
// included. Exact up to rounding, since the loss is piecewise bilinear.
int reference_case() {
  const Problem p{"fd", {1, 3, 4, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, true}, Layout::Contiguous, 0, 42, 1};
  const Problem q{"fd_groups", {1, 4, 4, 4, 2, 3, 2, 1, 0, 1, 1, 1, 2, 2, true}, Layout::Padded, 0, 43, 2};
  int bad = 0;
  for (const Problem& problem : {p, q}) {
    reference::Inputs in = make_inputs<double>(problem, /*allow_non_finite=*/false);
    const reference::Outputs ref = reference::compute(in);
    const Shape& s = in.s;
    const int64_t K = s.points(), G = s.offset_groups, oh = s.out_h(), ow = s.out_w();
    const double h = 1e-6;
    auto derivative = [&](double& x, bool central) {
      const double x0 = x;
      x = x0 + h;
      const double up = reference::loss(in);
      x = central ? x0 - h : x0;
      const double down = reference::loss(in);
      x = x0;
      return (up - down) / (central ? 2 * h : h);
    };
    auto check = [&](const char* what, double fd, double analytic, int64_t index) {
      if (!(std::abs(fd - analytic) <= 1e-6 * std::max(1.0, std::abs(analytic)))) {
        std::printf("    MISMATCH %s [%s] element %" PRId64 ": finite difference %.9g, analytic %.9g\n", what,
                    problem.name, index, fd, analytic);
        ++bad;
      }
    };
    int integer_positions = 0;
    for (int64_t c = 0; c < 2 * G * K; ++c) {
      for (int64_t y = 0; y < oh; ++y) {
        for (int64_t x = 0; x < ow; ++x) {
          double& off = in.offset.at(0, c, y, x);
          if (std::abs(off) > 100) continue;  // far outside: zero either way
          const bool integer = off == std::floor(off);
          integer_positions += integer;
          check("grad_offset", derivative(off, !integer), ref.grad_offset[(c * oh + y) * ow + x], c);
        }
      }
    }
    for (int64_t c = 0; c < G * K; ++c) {
      for (int64_t y = 0; y < oh; ++y) {
        for (int64_t x = 0; x < ow; ++x) {
          check("grad_mask", derivative(in.mask.at(0, c, y, x), true), ref.grad_mask[(c * oh + y) * ow + x], c);
        }
      }
    }
    for (size_t i = 0; i < in.image.size(); ++i) check("grad_input", derivative(in.image[i], true), ref.grad_input[i], static_cast<int64_t>(i));
    std::printf("  %s %s (%d offsets at integer positions)\n", bad ? "FAIL" : "ok  ", problem.name, integer_positions);
  }
  return bad;
}

// The problem the infinite-mask checks run, deep_c40_one_group: its last reduction step is shallower
// than a step, so that the tensor-core kernels' threads past its depth sample zeros (for 16-bit types
// steps of 32 channels: 32 + 8; for TF32 16 + 16 + 8).
const Problem& infinite_mask_problem() { return problem_named(igemm_problems(), "deep_c40_one_group"); }

template <typename scalar_t>
int run_igemm_case() {
  int bad = 0;
  for (const Problem& p : igemm_problems()) bad += check_igemm<scalar_t>(p);
  return bad + check_igemm<scalar_t>(infinite_mask_problem(), /*infinite_mask=*/true);
}

// Whether the launcher takes a tensor-core kernel for p: the cp.async kernel where its channel runs
// are whole 16-byte vectors, the mma.sync and wgmma ones where mma_kernel_applies (the WMMA kernel
// always).
template <typename scalar_t, TensorCoreKernel kKernel>
bool tensor_core_kernel_applies(const Problem& p) {
  if constexpr (kKernel == TensorCoreKernel::Mma || kKernel == TensorCoreKernel::Wgmma) {
    return rcm_fsad::kernels::mma_kernel_applies<scalar_t>(geometry(p));
  } else if constexpr (kKernel == TensorCoreKernel::WmmaAsync) {
    return geometry(p).channel_runs_are_multiples_of(rcm_fsad::kernels::Vector16<scalar_t>::kSize);
  }
  return true;
}

// check_igemm_tensor_cores with the block widths the launcher picks for p.
template <typename scalar_t, typename mma_t, TensorCoreKernel kKernel>
int check_tensor_core_widths(const Problem& p, int split, bool infinite_mask) {
  namespace kernels = rcm_fsad::kernels;
  const int64_t cog = p.out_channels / p.shape.groups;
  if constexpr (kKernel == TensorCoreKernel::Mma) {
    return kernels::with_mma_tiles<mma_t>(cog, [&](auto tiles) {
      using Tiles = decltype(tiles);
      return check_igemm_tensor_cores<scalar_t, mma_t, Tiles::kWarpCols, kKernel, Tiles::kWarpsAlongCols>(
          p, split, infinite_mask);
    });
  } else if constexpr (kKernel == TensorCoreKernel::Wgmma) {
    return kernels::with_wgmma_tiles<mma_t>(cog, [&](auto tiles) {
      return check_igemm_tensor_cores<scalar_t, mma_t, decltype(tiles)::kCols, kKernel>(p, split, infinite_mask);
    });
  } else {
    if (kernels::wmma_tile_cols<mma_t>(cog) == 128) {
      return check_igemm_tensor_cores<scalar_t, mma_t, 128, kKernel>(p, split, infinite_mask);
    }
    return check_igemm_tensor_cores<scalar_t, mma_t, 64, kKernel>(p, split, infinite_mask);
  }
}

// The ThreadSanitizer build runs the first problem (element loads) and the last two (16-byte loads,
// blocks 64 and, but for TF32, 128 columns wide): the barriers are the same on every problem, and a
// block of hundreds of emulated threads is slow under TSan. Split over kernel points
// (split_counts()): the first problem and the last, in every build.
//
// The cp.async and mma.sync kernels run on the problems whose channel runs are whole vectors
// (channel_runs_are_multiples_of, as the launcher checks): for 16-bit types the last three (the
// mma.sync kernel: five), for float also the 40-channel ones. Under TSan the cp.async kernel runs
// all of them; the mma.sync one the last three problems it applies to, unsplit: one of each warp layout, several
// row tiles, and in the 128 x 256 one, the warps that trade sampled rows, an idle one among them.
template <typename scalar_t, typename mma_t, TensorCoreKernel kKernel = TensorCoreKernel::Wmma>
int run_tensor_core_case() {
  constexpr bool kVectorsOnly = kKernel != TensorCoreKernel::Wmma;
  int bad = 0;
  constexpr bool kMmaProblems = kKernel == TensorCoreKernel::Mma || kKernel == TensorCoreKernel::Wgmma;
  const std::vector<Problem>& all = kMmaProblems ? mma_problems() : igemm_problems();
  const auto applies = tensor_core_kernel_applies<scalar_t, kKernel>;
  const auto check = check_tensor_core_widths<scalar_t, mma_t, kKernel>;
  const bool light = kMmaProblems && kThreadSanitizer;
  // Under light checking, the last three problems the kernel applies to.
  size_t light_from = all.size();
  for (int found = 0; light && found < 3 && light_from > 0;) found += applies(all[--light_from]) ? 1 : 0;
  // Split over kernel points: the first and the last problem the kernel takes (not the list's first and
  // last, which the kernels of whole vectors may not take).
  size_t first_taken = all.size(), last_taken = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    if (!applies(all[i])) continue;
    first_taken = std::min(first_taken, i);
    last_taken = i;
  }
  int checked = 0;
  int split_checked = 0;
  for (size_t i = 0; i < all.size(); ++i) {
    const Problem& p = all[i];
    if (!applies(p)) continue;
    if (!kVectorsOnly && kThreadSanitizer && i != 0 && i + 2 < all.size()) continue;
    if (light && i < light_from) continue;
    ++checked;
    std::vector<int> splits = {1};
    if (!light && (i == first_taken || i == last_taken)) {
      for (int split : split_counts(p)) splits.push_back(split);
      ++split_checked;
    }
    for (int split : splits) bad += check(p, split, false);
  }
  if (checked < 3) {
    std::printf("  FAIL only %d problems checked\n", checked);
    ++bad;
  }
  if (!light && split_checked < 2) {
    std::printf("  FAIL only %d problems checked split over kernel points\n", split_checked);
    ++bad;
  }
  // Not under TSan: no barrier differs from the problems above.
  if (!kThreadSanitizer) bad += check(infinite_mask_problem(), 1, true);
  if constexpr (kKernel == TensorCoreKernel::Wmma) {
    if (!kThreadSanitizer) {
      // The last problem whose runs of channels are whole vectors, from bases that are not on one.
      const auto last_vectors = std::find_if(all.rbegin(), all.rend(), [](const Problem& p) {
        return geometry(p).channel_runs_are_multiples_of(rcm_fsad::kernels::Vector16<scalar_t>::kSize);
      });
      if (last_vectors == all.rend()) std::abort();  // the problem list has lost them
      const bool wide = rcm_fsad::kernels::wmma_tile_cols<mma_t>(last_vectors->out_channels / last_vectors->shape.groups) == 128;
      for (const Misalign m : {Misalign::Input, Misalign::Weights}) {
        bad += wide ? check_wmma_misaligned<scalar_t, mma_t, 128>(*last_vectors, m)
                    : check_wmma_misaligned<scalar_t, mma_t, 64>(*last_vectors, m);
      }
    }
  }
  if (!kVectorsOnly && kThreadSanitizer) std::printf("  (ThreadSanitizer build: 3 of the %zu problems)\n", all.size());
  return bad;
}

template <TensorCoreKernel kKernel>
int run_tensor_core_dtype(const std::string& dtype) {
  if (dtype == "half") return run_tensor_core_case<__half, __half, kKernel>();
  if (dtype == "bfloat16") return run_tensor_core_case<__nv_bfloat16, __nv_bfloat16, kKernel>();
  if constexpr (kKernel == TensorCoreKernel::Mma || kKernel == TensorCoreKernel::Wgmma) {
    if (dtype == "tf32_split") return run_tensor_core_case<float, rcm_fsad::kernels::Tf32Split, kKernel>();
  }
  return run_tensor_core_case<float, rcm_fsad::kernels::Tf32, kKernel>();
}

// kernels::forward_splits against hand-derived cases (mostly 132 SMs, 2 blocks each: 264 slots, and
// the grid's limit of 65535 splits), and the ranges of kernel_point_range for its answer: none empty.
int splits_case() {
  struct Case {
    int64_t blocks, sms, per_sm, points, max_splits, want;
  };
  const Case cases[] = {
      {26, 132, 2, 9, 65535, 9},     // 264 / 26 = 10 splits wanted, at most one per kernel point
      {49, 132, 2, 9, 65535, 5},     // 5 wanted: 2 kernel points per split, so 5 splits (2,2,2,2,1)
      {66, 132, 2, 9, 65535, 3},     // 4 wanted: ceil(9/4) = 3 points per split, so 3 splits
      {196, 132, 2, 9, 65535, 1},    // more than half a wave: not split
      {264, 132, 2, 9, 65535, 1},    // a full wave
      {5000, 132, 2, 9, 65535, 1},   // many waves
      {10, 132, 2, 1, 65535, 1},     // one kernel point
      {100, 132, 3, 4, 65535, 2},    // 3 wanted of 4 points: 2 points per split, so 2 splits
      {1, 132, 1000, 70000, 65535, 35000},  // 65535 allowed of 70000 points: 2 points per split
      {26, 132, 2, 9, 4, 3},         // 4 allowed of 9 points: 3 points per split, so 3 splits
  };
  int bad = 0;
  for (const Case& c : cases) {
    const int64_t got = rcm_fsad::kernels::forward_splits(c.blocks, c.sms, c.per_sm, c.points, c.max_splits);
    rcm_fsad::kernels::DeformConvGeometry g{};
    g.kernel_h = c.points;
    g.kernel_w = 1;
    bool covered = true;  // consecutive non-empty ranges from 0 to the last kernel point
    int next = 0;
    for (int64_t split = 0; split < got; ++split) {
      const auto range = rcm_fsad::kernels::kernel_point_range(g, static_cast<uint32_t>(split),
                                                               static_cast<uint32_t>(got));
      covered = covered && range.begin == next && range.end > range.begin;
      next = range.end;
    }
    const bool ok = got == c.want && covered && next == c.points;
    std::printf("  %s forward_splits(blocks %" PRId64 ", sms %" PRId64 ", per SM %" PRId64 ", points %" PRId64
                ", at most %" PRId64 ") = %" PRId64 " (want %" PRId64 ")%s\n", ok ? "ok  " : "FAIL", c.blocks, c.sms,
                c.per_sm, c.points, c.max_splits, got, c.want, covered ? "" : ", a range empty or out of order");
    bad += !ok;
  }
  return bad;
}

// kernels::mma_steps_per_point against hand-derived cases, and against the steps ReductionSteps
// takes through one kernel point of every conv group (the order the weight fragments follow).
int mma_steps_case() {
  struct Case {
    bool float32;  // else bfloat16: steps of 32 channels (16 for float)
    int64_t channels, groups, offset_groups, want;
  };
  const Case cases[] = {
      {false, 256, 1, 1, 8},  // one run of 256 channels
      {false, 48, 1, 2, 2},   // two runs of 24 (one partial step each)
      {false, 96, 1, 4, 4},   // four runs of 24
      {false, 80, 2, 1, 2},   // groups of 40 in one offset group: 32 + 8
      {false, 48, 2, 3, 0},   // groups of 24 over offset groups of 16 (runs 16 + 8, then 8 + 16): not taken
      {true, 40, 1, 1, 3},    // 16 + 16 + 8
      {true, 64, 4, 2, 1},    // groups of 16 inside offset groups of 32
  };
  int bad = 0;
  for (const Case& c : cases) {
    DeformConvGeometry g{};
    g.batch = 1;
    g.channels = c.channels;
    g.kernel_h = g.kernel_w = 1;
    g.groups = c.groups;
    g.offset_groups = c.offset_groups;
    const int64_t got = c.float32 ? rcm_fsad::kernels::mma_steps_per_point<float>(g)
                                  : rcm_fsad::kernels::mma_steps_per_point<__nv_bfloat16>(g);
    bool ok = got == c.want;
    for (int64_t group = 0; ok && got > 0 && group < g.groups; ++group) {
      int64_t taken = 0;
      if (c.float32) {
        for (rcm_fsad::kernels::ReductionSteps<16> s(g, group, {0, 1}); !s.done(); s.next()) ++taken;
      } else {
        for (rcm_fsad::kernels::ReductionSteps<32> s(g, group, {0, 1}); !s.done(); s.next()) ++taken;
      }
      ok = taken == got;
    }
    std::printf("  %s mma_steps_per_point<%s>(C %" PRId64 ", groups %" PRId64 ", offset groups %" PRId64
                ") = %" PRId64 " (want %" PRId64 ", and what ReductionSteps takes in every group)\n",
                ok ? "ok  " : "FAIL", c.float32 ? "float" : "bfloat16", c.channels, c.groups, c.offset_groups, got,
                c.want);
    bad += !ok;
  }
  // mma_kernel_applies at the limits of the kernel's 32-bit arithmetic: pixel indices (batch * H * W)
  // up to 2^31 - 1, and a pixel's bytes (C * element size) up to 2^32 - 1.
  struct Limit {
    int64_t batch, height, width, channels;
    bool want;
  };
  const Limit limits[] = {
      {1, 32768, 65535, 256, true},          // 2^31 - 32768 pixels
      {1, 1, (int64_t{1} << 31) - 1, 256, true},  // 2^31 - 1 pixels (a prime: one row)
      {2, 32768, 32768, 256, false},         // 2^31 pixels
      {1, 1, 1, int64_t{1} << 31, false},    // 2^32 bytes a pixel in bfloat16
      {1, 1, 1, (int64_t{1} << 31) - 8, true},
  };
  for (const Limit& c : limits) {
    DeformConvGeometry g{};
    g.batch = c.batch;
    g.height = c.height;
    g.width = c.width;
    g.channels = c.channels;
    g.out_channels = 8;
    g.kernel_h = g.kernel_w = 1;
    g.groups = g.offset_groups = 1;
    const bool got = rcm_fsad::kernels::mma_kernel_applies<__nv_bfloat16>(g);
    std::printf("  %s mma_kernel_applies<bfloat16>(N %" PRId64 ", %" PRId64 "x%" PRId64 ", C %" PRId64
                ") = %d (want %d)\n", got == c.want ? "ok  " : "FAIL", c.batch, c.height, c.width, c.channels,
                got, c.want);
    bad += got != c.want;
  }
  return bad;
}

// batched_transpose_kernel: (batch, rows, cols) -> (batch, cols, rows), cast to out_t, against a plain
// loop, bit for bit; into a NaN-filled output, so that an element left unwritten shows. Shapes of whole,
// partial and single tiles; the launcher's grid (transpose_grid), at most 2 x 2 x 2 of its blocks all at
// once (the emulator's thread limit), and grids small enough that each block walks several tiles along
// every axis, which is what needs the barrier before a tile's reuse.
template <typename in_t, typename out_t>
int transpose_case() {
  struct Case {
    int64_t batch, rows, cols;
  };
  const Case cases[] = {{1, 1, 1}, {2, 5, 70}, {3, 33, 31}, {1, 64, 64}, {2, 100, 3}, {1, 3, 100}, {2, 70, 65}};
  int bad = 0;
  // The launcher's grid within CUDA's limits (x < 2^31, y and z <= 65535); the kernel strides over
  // the rest, as the small grids below check.
  struct GridCase {
    int64_t batch, rows, cols;
    uint32_t x, y, z;
  };
  const GridCase grids[] = {{3, 33, 31, 1, 2, 3},
                            {70000, 3000000, 40, 2, 65535, 65535},
                            {1, 1, int64_t{1} << 37, (uint32_t{1} << 31) - 1, 1, 1}};
  for (const GridCase& c : grids) {
    const rcm_fsad::kernels::TransposeGrid got = rcm_fsad::kernels::transpose_grid(c.batch, c.rows, c.cols);
    const bool ok = got.x == c.x && got.y == c.y && got.z == c.z;
    std::printf("  %s transpose_grid(%" PRId64 ", %" PRId64 ", %" PRId64 ") = (%u, %u, %u) (want (%u, %u, %u))\n",
                ok ? "ok  " : "FAIL", c.batch, c.rows, c.cols, got.x, got.y, got.z, c.x, c.y, c.z);
    bad += !ok;
  }
  Rng rng{42};
  for (const Case& c : cases) {
    const int64_t n = c.batch * c.rows * c.cols;
    std::vector<in_t> in(n);
    for (in_t& v : in) v = static_cast<in_t>(static_cast<float>(rng.uniform(-100.0, 100.0)));
    std::vector<double> want(n);
    for (int64_t b = 0; b < c.batch; ++b) {
      for (int64_t r = 0; r < c.rows; ++r) {
        for (int64_t col = 0; col < c.cols; ++col) {
          want[(b * c.cols + col) * c.rows + r] = to_double(static_cast<out_t>(in[(b * c.rows + r) * c.cols + col]));
        }
      }
    }
    const rcm_fsad::kernels::TransposeGrid launched = rcm_fsad::kernels::transpose_grid(c.batch, c.rows, c.cols);
    struct Launch {
      emu::Mode mode;
      dim3 grid;
    };
    const Launch launches[] = {{emu::Mode::BlockByBlock, dim3(launched.x, launched.y, launched.z)},
                               {emu::Mode::AllBlocks, dim3(std::min(launched.x, 2u), std::min(launched.y, 2u),
                                                           std::min(launched.z, 2u))},
                               {emu::Mode::BlockByBlock, dim3(1, 1, 1)},
                               {emu::Mode::BlockByBlock, dim3(2, 2, 2)}};
    for (const Launch& l : launches) {
      std::vector<out_t> out(n, static_cast<out_t>(std::numeric_limits<float>::quiet_NaN()));
      emu::launch(l.mode, l.grid, dim3(rcm_fsad::kernels::TransposeTiles::kThreads),
                  rcm_fsad::kernels::transpose_shared_bytes<in_t>(),
                  rcm_fsad::kernels::batched_transpose_kernel<in_t, out_t>, c.batch, c.rows, c.cols, in.data(),
                  out.data());
      int64_t wrong = 0;
      for (int64_t i = 0; i < n; ++i) {
        const double got = to_double(out[i]);
        wrong += !(got == want[i]);  // NaN (unwritten) counts as wrong
      }
      std::printf("  %s transpose (%" PRId64 ", %" PRId64 ", %" PRId64 ") [%s grid (%u,%u,%u)]: %" PRId64
                  " of %" PRId64 " elements wrong\n", wrong ? "FAIL" : "ok  ", c.batch, c.rows, c.cols,
                  emu::mode_name(l.mode), l.grid.x, l.grid.y, l.grid.z, wrong, n);
      bad += wrong != 0;
    }
  }
  return bad;
}

// ---------------------------------------------------------------------------------------------
// Random problems.

// The problems the `fuzz` case runs (seeds kFuzzFirstSeed onwards); `fuzz <first seed> <count>` runs
// others, for a longer search by hand.
constexpr uint64_t kFuzzFirstSeed = 1;
constexpr int64_t kFuzzProblems = 6;
// Rows of a random problem at most, channels at most (per vector draw and not), output channels a
// conv group at most: every emulated warp collective costs microseconds of context switches per lane.
constexpr int64_t kFuzzMaxRows = 160;
constexpr int64_t kFuzzMaxChannels = 96;
constexpr int64_t kFuzzMaxOutputsPerGroup = 260;

// A problem drawn from `seed`: batch, image and kernel sizes, strides, paddings, dilations, conv and
// offset groups, the fields' layout, im2col's and col2im's rows per launch, the output channels (up to
// three column tiles of the tensor-core kernels), with or without a mask (and a bias: odd seeds). Half
// have conv and offset groups of whole 16-byte vectors in every type (multiples of 8 channels), which
// the vector, cp.async, mma.sync and wgmma paths need.
Problem random_problem(uint64_t seed) {
  static std::deque<std::string> names;  // Problem::name points into it
  Rng rng{seed * 0x2545f4914f6cdd1dull + 99u};
  for (;;) {
    Shape s{};
    s.groups = rng.integer(1, 3);
    s.offset_groups = rng.integer(1, 4);
    const bool vectors = rng.uniform() < 0.5;
    const int64_t unit = std::lcm(s.groups, s.offset_groups) * (vectors ? 8 : 1);
    if (unit > kFuzzMaxChannels) continue;
    s.C = unit * rng.integer(1, std::min<int64_t>(kFuzzMaxChannels / unit, vectors ? 3 : 8));
    s.N = rng.integer(1, 3);
    s.H = rng.integer(1, 10);
    s.W = rng.integer(1, 10);
    s.kh = rng.integer(1, rng.uniform() < 0.1 ? 5 : 3);
    s.kw = rng.integer(1, rng.uniform() < 0.1 ? 5 : 3);
    s.sh = rng.integer(1, 3);
    s.sw = rng.integer(1, 3);
    s.ph = rng.integer(0, 2);
    s.pw = rng.integer(0, 2);
    s.dh = rng.integer(1, 2);
    s.dw = rng.integer(1, 2);
    s.has_mask = rng.uniform() < 0.75;
    if (s.out_h() < 1 || s.out_w() < 1 || s.rows() > kFuzzMaxRows) continue;
    const int64_t most = s.groups == 1 ? kFuzzMaxOutputsPerGroup : kFuzzMaxOutputsPerGroup / 2;
    const int64_t per_group = rng.uniform() < 0.25 ? rng.integer(65, most) : rng.integer(1, 24);
    const Layout layout = static_cast<Layout>(rng.integer(0, 2));
    const int64_t chunk = rng.uniform() < 0.5 ? 0 : rng.integer(1, s.rows());
    names.push_back("fuzz" + std::to_string(seed));
    return {names.back().c_str(), s, layout, chunk, seed, s.groups * per_group};
  }
}

void describe(const Problem& p) {
  const Shape& s = p.shape;
  std::printf("%s: N %" PRId64 ", C %" PRId64 ", %" PRId64 "x%" PRId64 ", kernel %" PRId64 "x%" PRId64
              ", stride %" PRId64 "x%" PRId64 ", padding %" PRId64 "x%" PRId64 ", dilation %" PRId64 "x%" PRId64
              ", groups %" PRId64 ", offset groups %" PRId64 ", %s, C_out %" PRId64 ", %s fields, chunk %" PRId64 "\n",
              p.name, s.N, s.C, s.H, s.W, s.kh, s.kw, s.sh, s.sw, s.ph, s.pw, s.dh, s.dw, s.groups, s.offset_groups,
              s.has_mask ? "mask" : "no mask", p.out_channels, layout_name(p.layout), p.chunk);
}

// im2col, col2im and the deterministic backward on p.
template <typename scalar_t, typename index_t>
int fuzz_sampling(const Problem& p) {
  return check_im2col<scalar_t, index_t>(p, kProduction) + check_col2im<scalar_t, index_t>(p, kSmallCol2im, false).bad +
         check_col2im_deterministic<scalar_t, index_t>(p, {kProduction, kOneWarpChunked});
}

// Those and the CUDA-core forward on p in scalar_t, the sampling kernels with int32 or int64 indices.
template <typename scalar_t>
int fuzz_cuda_cores(const Problem& p, bool int32_indices) {
  return (int32_indices ? fuzz_sampling<scalar_t, int32_t>(p) : fuzz_sampling<scalar_t, int64_t>(p)) +
         check_igemm<scalar_t>(p);
}

// Problems each tensor-core kernel and type ran on, by "kernel type", for fuzz_case's summary.
std::map<std::string, int>& fuzz_runs() {
  static std::map<std::string, int> runs;
  return runs;
}

// A tensor-core kernel on p where the launcher would take it.
template <typename scalar_t, typename mma_t, TensorCoreKernel kKernel>
int fuzz_tensor_cores(const Problem& p, int split) {
  if (!tensor_core_kernel_applies<scalar_t, kKernel>(p)) return 0;
  ++fuzz_runs()[std::string(kernel_name(kKernel)) + " " + mma_type_name<scalar_t, mma_t>()];
  return check_tensor_core_widths<scalar_t, mma_t, kKernel>(p, split, false);
}

template <typename scalar_t>
int fuzz_tensor_cores_16_bit(const Problem& p, int split) {
  return fuzz_tensor_cores<scalar_t, scalar_t, TensorCoreKernel::Wmma>(p, split) +
         fuzz_tensor_cores<scalar_t, scalar_t, TensorCoreKernel::WmmaAsync>(p, split) +
         fuzz_tensor_cores<scalar_t, scalar_t, TensorCoreKernel::Mma>(p, split) +
         fuzz_tensor_cores<scalar_t, scalar_t, TensorCoreKernel::Wgmma>(p, split);
}

// Every kernel on the problem of `seed`: the sampling kernels and the CUDA-core forward in an element
// type (and index type) drawn with it, and every tensor-core kernel that applies, in float (TF32 and
// split TF32) and a 16-bit type, unsplit or split over a drawn count of kernel points.
int fuzz_problem(uint64_t seed) {
  const Problem p = random_problem(seed);
  describe(p);
  Rng rng{seed ^ 0x5851f42d4c957f2dull};
  std::vector<int> splits = split_counts(p);
  splits.push_back(1);
  const int split = splits[rng.integer(0, static_cast<int64_t>(splits.size()) - 1)];
  const bool int32_indices = rng.uniform() < 0.5;
  int bad = 0;
  switch (rng.integer(0, 3)) {
    case 0: bad += fuzz_cuda_cores<float>(p, int32_indices); break;
    case 1: bad += fuzz_cuda_cores<double>(p, int32_indices); break;
    case 2: bad += fuzz_cuda_cores<__half>(p, int32_indices); break;
    default: bad += fuzz_cuda_cores<__nv_bfloat16>(p, int32_indices); break;
  }
  using rcm_fsad::kernels::Tf32;
  using rcm_fsad::kernels::Tf32Split;
  bad += rng.uniform() < 0.5 ? fuzz_tensor_cores_16_bit<__half>(p, split) : fuzz_tensor_cores_16_bit<__nv_bfloat16>(p, split);
  bad += fuzz_tensor_cores<float, Tf32, TensorCoreKernel::Wmma>(p, split) +
         fuzz_tensor_cores<float, Tf32, TensorCoreKernel::WmmaAsync>(p, split) +
         fuzz_tensor_cores<float, Tf32, TensorCoreKernel::Mma>(p, split) +
         fuzz_tensor_cores<float, Tf32Split, TensorCoreKernel::Mma>(p, split) +
         fuzz_tensor_cores<float, Tf32, TensorCoreKernel::Wgmma>(p, split) +
         fuzz_tensor_cores<float, Tf32Split, TensorCoreKernel::Wgmma>(p, split);
  return bad;
}

int fuzz_case(uint64_t first_seed, int64_t count) {
  int bad = 0;
  for (int64_t i = 0; i < count; ++i) bad += fuzz_problem(first_seed + static_cast<uint64_t>(i));
  std::printf("  %" PRId64 " problems; of them the tensor-core kernels took", count);
  const char* separator = ":";
  for (const auto& [kernel, runs] : fuzz_runs()) {
    std::printf("%s %s %d", separator, kernel.c_str(), runs);
    separator = ",";
  }
  std::printf("\n");
  return bad;
}

std::vector<std::string> case_names() {
  std::vector<std::string> names = {"reference", "splits", "mma_steps", "fuzz"};
  for (const char* dtype : {"float", "double", "half", "bfloat16"}) names.push_back(std::string("igemm/") + dtype);
  for (const char* dtype : {"half", "bfloat16", "tf32"}) names.push_back(std::string("wmma/") + dtype);
  for (const char* dtype : {"half", "bfloat16", "tf32"}) names.push_back(std::string("wmma_async/") + dtype);
  for (const char* dtype : {"half", "bfloat16", "tf32", "tf32_split"}) names.push_back(std::string("mma/") + dtype);
  for (const char* dtype : {"half", "bfloat16", "tf32", "tf32_split"}) names.push_back(std::string("wgmma/") + dtype);
  for (const char* types : {"float", "double", "half", "bfloat16", "float_to_half", "float_to_bfloat16"}) {
    names.push_back(std::string("transpose/") + types);
  }
  for (const char* kernel : {"im2col", "col2im", "col2im_deterministic"}) {
    for (const char* dtype : {"float", "double", "half", "bfloat16"}) {
      for (const char* index : {"int32", "int64"}) names.push_back(std::string(kernel) + "/" + dtype + "/" + index);
    }
  }
  return names;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string name = argc > 1 ? argv[1] : "";
  if (argc != 2 && !(argc == 4 && name == "fuzz")) {
    std::fprintf(stderr, "usage: %s <kernel>/<dtype>/<index> | reference | fuzz [<first seed> <count>] | --list\n",
                 argv[0]);
    return 2;
  }
  const std::vector<std::string> names = case_names();
  if (name == "--list") {
    for (const std::string& n : names) std::printf("%s\n", n.c_str());
    return 0;
  }
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    std::fprintf(stderr, "unknown case '%s' (see --list)\n", name.c_str());
    return 2;
  }
  const auto start = std::chrono::steady_clock::now();
  std::printf("%s\n", name.c_str());
  int bad = 0;
  if (name == "reference") {
    bad = reference_case();
  } else if (name == "splits") {
    bad = splits_case();
  } else if (name == "mma_steps") {
    bad = mma_steps_case();
  } else if (name == "fuzz") {
    uint64_t first_seed = kFuzzFirstSeed;
    int64_t count = kFuzzProblems;
    if (argc == 4) {
      char* seed_end = nullptr;
      char* count_end = nullptr;
      first_seed = std::strtoull(argv[2], &seed_end, 10);
      count = std::strtoll(argv[3], &count_end, 10);
      if (*argv[2] == '\0' || *seed_end != '\0' || *argv[3] == '\0' || *count_end != '\0' || count < 1) {
        std::fprintf(stderr, "fuzz: the first seed must be a number and the count a positive one, got '%s' '%s'\n",
                     argv[2], argv[3]);
        return 2;
      }
    }
    bad = fuzz_case(first_seed, count);
  } else if (name.rfind("transpose/", 0) == 0) {
    const std::string types = name.substr(10);
    if (types == "float") bad = transpose_case<float, float>();
    if (types == "double") bad = transpose_case<double, double>();
    if (types == "half") bad = transpose_case<__half, __half>();
    if (types == "bfloat16") bad = transpose_case<__nv_bfloat16, __nv_bfloat16>();
    if (types == "float_to_half") bad = transpose_case<float, __half>();
    if (types == "float_to_bfloat16") bad = transpose_case<float, __nv_bfloat16>();
  } else if (name.rfind("igemm/", 0) == 0) {
    const std::string dtype = name.substr(6);
    if (dtype == "float") bad = run_igemm_case<float>();
    if (dtype == "double") bad = run_igemm_case<double>();
    if (dtype == "half") bad = run_igemm_case<__half>();
    if (dtype == "bfloat16") bad = run_igemm_case<__nv_bfloat16>();
  } else if (name.rfind("wmma_async/", 0) == 0 || name.rfind("wmma/", 0) == 0 || name.rfind("mma/", 0) == 0 ||
             name.rfind("wgmma/", 0) == 0) {
    const std::string family = name.substr(0, name.find('/'));
    const std::string dtype = name.substr(name.find('/') + 1);
    bad = family == "wmma_async" ? run_tensor_core_dtype<TensorCoreKernel::WmmaAsync>(dtype)
          : family == "mma"      ? run_tensor_core_dtype<TensorCoreKernel::Mma>(dtype)
          : family == "wgmma"    ? run_tensor_core_dtype<TensorCoreKernel::Wgmma>(dtype)
                                 : run_tensor_core_dtype<TensorCoreKernel::Wmma>(dtype);
  } else {
    const std::string kernel = name.substr(0, name.find('/'));
    const std::string rest = name.substr(name.find('/') + 1);
    const std::string dtype = rest.substr(0, rest.find('/'));
    const std::string index = rest.substr(rest.find('/') + 1);
    if (dtype == "float") bad = dispatch_index<float>(kernel, index);
    if (dtype == "double") bad = dispatch_index<double>(kernel, index);
    if (dtype == "half") bad = dispatch_index<__half>(kernel, index);
    if (dtype == "bfloat16") bad = dispatch_index<__nv_bfloat16>(kernel, index);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s %s (%.2fs)\n", bad ? "FAIL" : "PASS", name.c_str(), seconds);
  return bad ? 1 : 0;
}
