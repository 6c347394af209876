// CPU backend of deform_conv2d: tiles of output pixels are sampled into a cache-sized columns
// tile (sampling.h) and multiplied by the weight right away (a GEMM per conv group, or group_loops.h),
// so no full columns buffer is ever materialised; work_split.h spreads the tiles over the threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../deform_conv2d_args.h"
#include "../kernels/deform_conv2d_math.cuh"
#include "cpu_capability.h"
#include "grad_rows.h"
#include "group_loops.h"
#include "hot_loop.h"
#include "layout_copies.h"
#include "onednn_gemms.h"
#include "sampling.h"
#include "weight_cache.h"
#include "work_split.h"

namespace rcm_fsad {
namespace cpu {
namespace {

// Multiply-adds a conv group and output pixel: kernel points x input x output channels of a group, what
// the rules below on the products' path (group loops, bfloat16 GEMMs) weigh.
int64_t group_products(const DeformConvGeometry& g) {
  return g.kernel_points() * g.channels_per_group() * (g.out_channels / g.groups);
}

// Whether a layer's products with its weights go through group_loops.h instead of a GEMM per conv group
// and tile of rows: where it has several groups, each of at most kGroupLoopsMaxProducts group_products,
// or of at most kGroupLoopsMaxChannels input channels and kGroupLoopsMaxProductsFewChannels products. The
// loops vectorise along the groups and read a group's columns cg apart: many channels a group leave them
// few groups to run along. Measured on 2 threads (N=8, 64-80 channels at 56x56 and 240-256 at 14x14,
// forward and forward+backward, each way on the same inputs), the loops' time over the GEMMs':
//   - up to 96 products: 0.06-0.90x (a depthwise forward 0.16x and 0.06x), except 8 channels x 2 outputs
//     of a 2x3 kernel: 1.15-1.34x at 10 groups, 0.72-0.81x at 30;
//   - 4 channels a group or fewer, 108 to 288 products: 0.31-1.02x (the most, 2 channels x 16 outputs);
//   - 8 channels a group: 0.58-1.09x at 144 products, 0.72-1.33x at 216, 0.86-1.52x at 288;
//     16: 0.84-2.0x at 144, 0.93-2.3x at 288; 32: 1.4-3.0x at 288;
//   - beyond 288: 0.93-3.2x.
constexpr int64_t kGroupLoopsMaxProducts = 96;
constexpr int64_t kGroupLoopsMaxChannels = 4;
constexpr int64_t kGroupLoopsMaxProductsFewChannels = 288;
bool use_group_loops(const DeformConvGeometry& g) {
  const int64_t products = group_products(g);
  return g.groups > 1 && (products <= kGroupLoopsMaxProducts ||
                          (g.channels_per_group() <= kGroupLoopsMaxChannels &&
                           products <= kGroupLoopsMaxProductsFewChannels));
}

GroupBlock group_block(const DeformConvGeometry& g) {
  return {g.groups, g.channels_per_group(), g.out_channels / g.groups, g.kernel_points()};
}

// grad_block (M, N) += grad_rows^T cols, for a tile's rows of the output gradient (len, M) and of the
// columns (len, N) of one conv group: in oneDNN with `onednn`, else in BLAS.
void add_weight_gradient_block(at::Tensor& grad_block, const at::Tensor& grad_rows, const at::Tensor& cols,
                               bool onednn) {
  if (onednn) {
    add_transposed_product(grad_block, grad_rows, cols);
  } else {
    grad_block.addmm_(grad_rows.t(), cols);
  }
}

// A block's weight gradient over a tile of len rows by the group loops, added to the block's part of a
// copy of the weight matrix's gradient (grad_block, rows weight_row apart): the tile's sum apart first in
// `sums` ((points * cg) x outputs, as group_loops_weight_gradient sums it: transposed, output-major), as a
// GEMM per tile sums it, then grad_block[(gi * m + o) * weight_row + k * cg + c'] += sums[(k * cg + c') *
// outputs + o * groups + gi]. grad_rows, grad_stride, output_stride and cols as group_loops_weight_gradient
// takes them.
template <typename T>
[[gnu::always_inline]] inline void add_group_loops_weight_gradient(const GroupBlock& b, int64_t len,
                                                                   const T* grad_rows, int64_t grad_stride,
                                                                   int64_t output_stride, const T* cols, T* sums,
                                                                   T* grad_block, int64_t weight_row) {
  const int64_t width = b.points * b.cg;
  std::fill(sums, sums + width * b.outputs(), T(0));
  group_loops_weight_gradient(b, len, grad_rows, grad_stride, output_stride, cols, sums);
  for (int64_t gi = 0; gi < b.groups; ++gi) {
    for (int64_t o = 0; o < b.m; ++o) {
      T* grad_oc = grad_block + (gi * b.m + o) * weight_row;
      const T* sums_oc = sums + b.output_major(gi, o);
      for (int64_t j = 0; j < width; ++j) grad_oc[j] += sums_oc[j * b.outputs()];
    }
  }
}
// Stores image n's input gradient, scattered as NHWC rows into `image` (H * W * C values), into grad_input
// (N, C, H, W), contiguous or channels_last, of type T or bfloat16 (whose layers sum in float32).
template <typename T>
void store_image_gradient(const T* image, const at::Tensor& grad_input, int64_t n, bool avx2_fma) {
  const int64_t channels = grad_input.size(1);
  const int64_t pixels = grad_input.size(2) * grad_input.size(3);
  const auto store = [&](auto* out) {
    using D = std::remove_pointer_t<decltype(out)>;
    D* o = out + n * grad_input.stride(0);
    run_hot_loop(avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
      if (grad_input.stride(1) == 1) {  // NHWC, as the image: only the type changes
        for (int64_t i = 0; i < pixels * channels; ++i) o[i] = static_cast<D>(image[i]);
        return;
      }
      store_planes(image, pixels, channels, o, pixels);
    });
  };
  if (grad_input.scalar_type() == at::kBFloat16) {
    store(grad_input.mutable_data_ptr<at::BFloat16>());
  } else {
    store(grad_input.mutable_data_ptr<T>());
  }
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

// Whether a bfloat16 forward multiplies in bfloat16, and its backward's columns' gradient too: where the
// CPU does so natively and oneDNN is on (torch.backends.mkldnn), for layers that take the GEMMs (the
// group loops compute in float32) with at least kBfloat16GemmMinProducts group_products. The columns are
// sampled in float32 and stored rounded to bfloat16, and each GEMM sums in float32 and rounds once, as
// the CUDA tensor-core kernels do. On an AVX512-BF16 EPYC (one thread) oneDNN's bfloat16 GEMM costs about
// 14 us a call more than float32's, and then runs at about twice its rate: a tile of 64 or 256 rows broke
// even at 1.1-1.2 million multiply-adds (256 x 72 x 64: 1.08x float32's speed, 256 x 36 x 64: 0.74x) and
// took 0.5x float32's time from 256 x 576 x 16 up (the first benchmark case's tile, 256 x 576 x 64: 101
// us against 192). So the GEMMs take bfloat16 from 4096 products a row, a full tile of 256 rows at about
// 1 million. Without native bfloat16 a bfloat16 GEMM is emulated (90x slower with oneDNN off); there, and
// for smaller layers, the op computes in float32.
// Both GEMMs' reductions (the forward's over a group's kernel points x input channels, the columns'
// gradient's over its output channels) must also be whole multiples of kBfloat16GemmReductionStep. On a
// CPU with AMX, oneDNN's bfloat16 GEMM (torch 2.14's) reads a reduction's tail past the end of an A row:
// a NaN or infinity in one row of A made NaN of another row's output, finite as it was (uxlfoundation/
// oneDNN#5717). An AMX tile holds 32 bfloat16 values of a row, so a whole number of them leaves no tail. On
// a Xeon with AMX (2 threads) NaN leaked between rows at 156 of the reduction lengths from 1 to 199 (every
// odd one from 3), and at none of 32, 64, 96, 288, 576 and 1152, in the op's layouts of either GEMM. The
// rule holds on every CPU, so that which layers take bfloat16 does not hang on the kernel oneDNN picks.
constexpr int64_t kBfloat16GemmMinProducts = 4096;
constexpr int64_t kBfloat16GemmReductionStep = 32;
bool bfloat16_gemms(const at::Tensor& input, const DeformConvGeometry& g) {
  const bool whole_steps = (g.kernel_points() * g.channels_per_group()) % kBfloat16GemmReductionStep == 0 &&
                           (g.out_channels / g.groups) % kBfloat16GemmReductionStep == 0;
  return input.scalar_type() == at::kBFloat16 && !use_group_loops(g) &&
         group_products(g) >= kBfloat16GemmMinProducts && whole_steps && cpu_bfloat16_gemms();
}

std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->to(at::kFloat)) : std::nullopt;
}

// The sampling (sample_columns) indexes an image's pixels in 32 bits, in which its loops vectorise.
void check_cpu_image_size(const DeformConvGeometry& g) {
  TORCH_CHECK(g.height * g.width < (int64_t(1) << 31),
              "deform_conv2d: the CPU kernel takes images of fewer than 2^31 pixels (height x width), got input of ",
              g.height, " x ", g.width);
}

void check_cpu_dtype(const at::Tensor& input) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "deform_conv2d: the CPU kernel supports float32, float64, float16 and bfloat16 inputs, got ",
              input.scalar_type());
}

// The forward of checked arguments in the dtype of its sampling and GEMMs, the input's: float32 or float64, or
// bfloat16 with gemms16. The weight may be the caller's 16-bit one where the rest was converted to float32:
// its operands are made from it in the input's dtype, and the cache keeps them under the caller's weight
// (a converted copy would be a new tensor on every call).
at::Tensor forward_cpu(const DeformConvGeometry& g, const at::Tensor& input, const at::Tensor& offset,
                       const at::Tensor& weight, const std::optional<at::Tensor>& mask,
                       const std::optional<at::Tensor>& bias, bool gemms16) {
  const int64_t rows = g.batch * g.out_pixels();
  // The tiles write the output in its own layout: no NHWC buffer and no copy from it (a copy took 0.7 ms
  // of a 64-channel layer's forward at 56x56, and 2.3 of 3.8 ms at 1024 output channels and 14x14, on
  // 2 threads).
  const at::Tensor out = empty_output(input, g);
  if (rows > 0 && g.out_channels > 0) {
    // The sampling's dtype: bfloat16 is sampled in float32 (its GEMMs' operands are bfloat16).
    const at::ScalarType sampled = gemms16 ? at::kFloat : input.scalar_type();
    const at::Tensor offset_s = offset.to(sampled);
    // Copied whole, once, only where its pixels are not evenly spaced (height and width transposed, say).
    const at::Tensor images_in = evenly_spaced(input);
    const std::optional<at::Tensor> mask_s = gemms16 ? to_float(mask) : mask;
    const at::Tensor zeros = at::zeros({g.channels}, input.options().dtype(sampled));
    const std::vector<kernels::KernelPoint> points = kernel_points(g);
    const bool loops = use_group_loops(g);
    // Channels 1 apart: the output is NHWC rows (channels_last, or images of one pixel), which the GEMMs
    // write in place and the group loops a tile at a time. They write an NCHW output's tile apart and
    // store it as planes, image by image: an output a GEMM per image wrote in place took 1.4-2.9x as long
    // at 7x7 and 3x3 pixels, and 5% longer at 14x14 (2 threads).
    const bool nhwc = out.stride(1) == 1;
    const int64_t row_stride = nhwc ? g.out_channels : out.stride(3);
    const at::Tensor out_rows = nhwc ? out.permute({0, 2, 3, 1}).view({rows, g.out_channels}) : at::Tensor();
    const ColumnWindow window =
        ColumnWindow::every_column(g, loops ? ColumnLayout::PointMajor : ColumnLayout::GroupMajor);
    const int64_t tile_rows = forward_tile_rows(rows, at::get_num_threads());
    const bool onednn = !loops && onednn_float_gemms(input);
    const WeightProduct product =
        loops ? WeightProduct::group_loops : onednn ? WeightProduct::onednn : WeightProduct::aten_gemm;
    const ForwardWeightConfig config{g.groups, onednn ? tile_rows : 0, product, input.scalar_type()};
    const std::shared_ptr<const ForwardWeight> prepared = cached_forward_weight(weight, config, [&] {
      const at::Tensor wmat = cpu_weight_matrix(weight.to(input.scalar_type()));
      ForwardWeight w;
      switch (product) {
        case WeightProduct::group_loops:  // transposed, its columns output-major (as the bias there)
          w.loops = output_major(wmat, 0, g).t().contiguous();
          break;
        case WeightProduct::onednn:
          w.packed = columns_weight(wmat, g.groups, tile_rows);
          break;
        case WeightProduct::aten_gemm:
          w.matrix = wmat;
          break;
      }
      return w;
    });
    const std::optional<at::Tensor> bias_c =
        bias.has_value() ? std::optional((loops ? output_major(*bias, 0, g) : *bias).contiguous()) : std::nullopt;
    // scalar_t: the sampling's type; out_t: the output's and the GEMMs' operands' (bfloat16 with gemms16).
    const auto forward_tiles = [&](auto sampled_type, auto out_type) {
      using scalar_t = decltype(sampled_type);
      using out_t = decltype(out_type);
      const Sampling<scalar_t> s = make_sampling<scalar_t>(g, images_in, offset_s, mask_s, zeros, points);
      const int64_t tiles = (rows + tile_rows - 1) / tile_rows;
      out_t* out_ptr = out.mutable_data_ptr<out_t>();
      parallel_for_calling_ops(0, tiles, [&](int64_t t0, int64_t t1) {
        at::Tensor cols = at::empty({tile_rows, g.column_width()}, input.options());
        out_t* cols_ptr = cols.mutable_data_ptr<out_t>();
        at::Tensor scratch = at::empty({loops ? g.out_channels : 0}, input.options());
        at::Tensor tile_out = at::empty({loops || nhwc || onednn ? 0 : tile_rows, g.out_channels}, input.options());
        WorkerImages<scalar_t> images(s, images_in);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t r0 = t * tile_rows;
          const int64_t len = std::min(tile_rows, rows - r0);
          sample_columns(images, r0, r0 + len, window, cols_ptr);
          // The tile's NHWC rows, which an NCHW output stores below: tile_out, or oneDNN's product itself.
          at::Tensor tile_values = tile_out;
          if (!loops) {
            const at::Tensor tile_cols = cols.narrow(0, 0, len);
            const auto multiply_into = [&](at::Tensor out_tile) {
              if (onednn) {
                prepared->packed.multiply_rows(tile_cols, bias_c, out_tile);
              } else {
                columns_times_weight(tile_cols, prepared->matrix, bias_c, out_tile, g);
              }
            };
            if (nhwc) {  // the output's own rows, written in place
              multiply_into(out_rows.narrow(0, r0, len));
              continue;
            }
            if (onednn) {
              tile_values = prepared->packed.product(tile_cols, bias_c);
            } else {
              multiply_into(tile_out.narrow(0, 0, len));
            }
          }
          // The tile's rows image by image (NHWC rows all at once): an image's output pixels are
          // row_stride apart, its channels out.stride(1).
          for (int64_t a = 0, n = r0 / g.out_pixels(); a < len; ++n) {
            const int64_t pixel0 = r0 + a - n * g.out_pixels();
            const int64_t seg = nhwc ? len - a : std::min(len - a, g.out_pixels() - pixel0);
            out_t* o = out_ptr + n * out.stride(0) + pixel0 * row_stride;
            run_hot_loop(s.avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
              if constexpr (std::is_same_v<out_t, scalar_t>) {
                if (loops) {
                  group_loops_forward(group_block(g), seg, cols_ptr + a * g.column_width(),
                                      prepared->loops.const_data_ptr<scalar_t>(),
                                      bias_c.has_value() ? bias_c->const_data_ptr<scalar_t>() : nullptr, o,
                                      row_stride, out.stride(1), scratch.mutable_data_ptr<scalar_t>());
                  return;
                }
              }
              store_planes(tile_values.const_data_ptr<out_t>() + a * g.out_channels, seg, g.out_channels, o,
                           out.stride(1));
            });
            a += seg;
          }
        }
      });
    };
    if (gemms16) {
      forward_tiles(float{}, at::BFloat16{});
    } else {
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_cpu",
                                 [&] { forward_tiles(scalar_t{}, scalar_t{}); });
    }
  }
  return out;
}

at::Tensor deform_conv2d_cpu(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                             const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DeformConvGeometry g =
      check_deform_conv2d_args(input, offset, weight, mask, bias, stride, padding, dilation);
  check_cpu_image_size(g);
  const bool gemms16 = bfloat16_gemms(input, g);
  if (computed_in_float(input) && !gemms16) {
    return forward_cpu(g, input.to(at::kFloat), offset.to(at::kFloat), weight, to_float(mask), to_float(bias), false)
        .to(input.scalar_type());
  }
  if (!gemms16) check_cpu_dtype(input);
  return forward_cpu(g, input, offset, weight, mask, bias, gemms16);
}

// What the passes of a backward read and write, in the dtype of its sampling and sums, scalar_t (float32
// for bfloat16 layers, whose GEMMs take bfloat16 operands with gemms16).
template <typename scalar_t>
struct BackwardOperands {
  const DeformConvGeometry& g;
  const Sampling<scalar_t>& s;
  at::Tensor input;  // (N, C, H, W), as make_sampling took it: what WorkerImages copies where s does not read it
  const BackwardSplit& split;
  bool loops;                   // use_group_loops
  bool gemms16;                 // bfloat16_gemms
  bool onednn;                  // the columns' gradient by packed_weight_t
  bool onednn_weight_gradient;  // the weight gradient's sums in oneDNN
  // The output gradient's rows, their channels output-major for the group loops: in scalar_t, and with
  // gemms16 in bfloat16 for the columns' gradient.
  const GradRows& grad_rows;
  const std::optional<GradRows>& grad_rows16;
  at::Tensor wmat;                      // (C_out, K * C_g), in the GEMMs' dtype
  at::Tensor weight_om;                 // with the group loops: wmat transposed, its columns output-major
  const PackedGroups& packed_weight_t;  // with onednn: columns_gradient_weight
  // What the passes write: the input gradient (N, C, H, W), in the input's layout and dtype (with several
  // bands, a copy for each band instead, (bands, N, H, W, C), summed into it after the passes); the offset's
  // and the mask's (undefined without a mask); the weight matrix's, split.weight_copies() copies (copies,
  // C_out, K * C_g).
  at::Tensor grad_input;
  at::Tensor grad_input_bands;
  at::Tensor grad_offset;
  at::Tensor grad_mask;
  at::Tensor grad_wmat_copies;
};

// The first pass: the input, offset and mask gradients, and with split.weight_in_first_pass the weight
// gradient. A task is the only writer of its band's copy of its image's input gradient, a worker of its
// copy of the weight gradient. With one band a task scatters its image into grad_input itself where that is
// NHWC in scalar_t, else into the worker's image, which it then stores there: a whole batch's NHWC gradient,
// zeroed before the passes and converted after them, was mapped afresh by glibc on every call, as
// WorkerImages says of the input (N=8, 64 channels, 56x56, 2 threads: 1.4 ms to zero it, 2.2 to convert it).
template <typename scalar_t>
void backward_first_pass(const BackwardOperands<scalar_t>& o) {
  const DeformConvGeometry& g = o.g;
  const BackwardSplit& split = o.split;
  const at::TensorOptions options = o.grad_offset.options();
  const int64_t out_cols = g.out_channels / g.groups;
  const int64_t weight_row = o.wmat.size(1);
  const int64_t image_size = g.height * g.width * g.channels;
  const ColumnWindow every_column =
      ColumnWindow::every_column(g, o.loops ? ColumnLayout::PointMajor : ColumnLayout::GroupMajor);
  const FieldStrides gos = field_strides(o.grad_offset);
  const bool has_mask = o.grad_mask.defined();
  const FieldStrides gms = has_mask ? field_strides(o.grad_mask) : FieldStrides{0, 0, 0, 0};
  scalar_t* gm_ptr = has_mask ? o.grad_mask.template mutable_data_ptr<scalar_t>() : nullptr;
  const bool in_place =
      o.grad_input.scalar_type() == c10::CppTypeToScalarType<scalar_t>::value && o.grad_input.stride(1) == 1;
  parallel_for_calling_ops(0, split.workers, [&](int64_t w0, int64_t w1) {
    const GroupBlock layer = group_block(g);
    at::Tensor grad_cols = at::empty({o.onednn ? 0 : kRowTile, g.column_width()}, options);
    at::Tensor image_grad = at::empty({split.bands == 1 && !in_place ? image_size : 0}, options);
    // With gemms16 the GEMMs' bfloat16 output, widened into grad_cols for the scatter in a pass of its
    // own: the scatter reading bfloat16 itself vectorised 4 wide instead of 8, with spills, and took 28% of
    // a backward instead of 18%.
    at::Tensor grad_cols16 = at::empty({o.gemms16 ? kRowTile : 0, g.column_width()}, o.wmat.options());
    const at::Tensor grad_buffer = o.grad_rows.buffer(kRowTile);
    const at::Tensor grad_buffer16 = o.gemms16 ? o.grad_rows16->buffer(kRowTile) : at::Tensor();
    at::Tensor sink = at::zeros({4, g.channels}, options);
    at::Tensor cols = at::empty({split.weight_in_first_pass ? kRowTile : 0, g.column_width()}, options);
    scalar_t* cols_ptr = split.weight_in_first_pass ? cols.mutable_data_ptr<scalar_t>() : nullptr;
    at::Tensor tile_sums =
        at::empty({split.weight_in_first_pass && o.loops ? layer.points * layer.cg : 0, layer.outputs()}, options);
    WorkerImages<scalar_t> images(o.s, o.input);
    // The image of the thread's last task: how far a run of copied images may reach.
    const int64_t last_image = (split.first_task(w1) - 1) / split.bands;
    // Rows [r0, r0 + len) of one band of one image, whose NHWC input gradient (or its band's copy) is grad_image.
    const auto tile = [&](int64_t r0, int64_t len, scalar_t* grad_image, at::Tensor& grad_wmat) {
      const at::Tensor grad_tile = o.grad_rows.rows(r0, len, grad_buffer, o.s.avx2_fma);
      const scalar_t* grad_row0 = grad_tile.template const_data_ptr<scalar_t>();
      // The tile's columns gradient (len, column_width): grad_cols, or oneDNN's product itself.
      at::Tensor grad_cols_tile = grad_cols;
      if (o.loops) {
        const scalar_t* w = o.weight_om.template const_data_ptr<scalar_t>();
        scalar_t* gc = grad_cols.mutable_data_ptr<scalar_t>();
        run_hot_loop(o.s.avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
          group_loops_columns_gradient(layer, len, grad_row0, g.out_channels, w, gc);
        });
      } else if (o.onednn) {
        grad_cols_tile = o.packed_weight_t.product(grad_tile, std::nullopt);
      } else {
        at::Tensor gemm_tile = o.gemms16 ? grad_cols16.narrow(0, 0, len) : grad_cols.narrow(0, 0, len);
        const at::Tensor gemm_grad = o.gemms16 ? o.grad_rows16->rows(r0, len, grad_buffer16, o.s.avx2_fma) : grad_tile;
        columns_gradient(gemm_grad, o.wmat, gemm_tile, g);
        if (o.gemms16) grad_cols.narrow(0, 0, len).copy_(gemm_tile);
      }
      sample_columns_backward(images.holding(r0 / g.out_pixels(), last_image), r0, r0 + len, every_column,
                              grad_cols_tile.template const_data_ptr<scalar_t>(), cols_ptr, grad_image,
                              sink.mutable_data_ptr<scalar_t>(), o.grad_offset.template mutable_data_ptr<scalar_t>(),
                              gos, gm_ptr, gms);
      if (!split.weight_in_first_pass) return;
      if (!o.loops) {
        const at::Tensor tile = cols.narrow(0, 0, len);
        for (int64_t group = 0; group < g.groups; ++group) {
          at::Tensor grad_block = grad_wmat.narrow(0, group * out_cols, out_cols);
          add_weight_gradient_block(grad_block, grad_tile.narrow(1, group * out_cols, out_cols),
                                    tile.narrow(1, group * weight_row, weight_row), o.onednn_weight_gradient);
        }
        return;
      }
      scalar_t* sums = tile_sums.mutable_data_ptr<scalar_t>();
      run_hot_loop(o.s.avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
        add_group_loops_weight_gradient(layer, len, grad_row0, g.out_channels, g.groups, cols_ptr, sums,
                                        grad_wmat.mutable_data_ptr<scalar_t>(), weight_row);
      });
    };
    for (int64_t worker = w0; worker < w1; ++worker) {
      at::Tensor grad_wmat = split.weight_in_first_pass ? o.grad_wmat_copies[worker] : at::Tensor();
      for (int64_t t = split.first_task(worker); t < split.first_task(worker + 1); ++t) {
        const int64_t n = t / split.bands;
        const int64_t band = t % split.bands;
        const int64_t begin = n * g.out_pixels() + std::min(g.out_pixels(), band * split.band_rows);
        const int64_t end = n * g.out_pixels() + std::min(g.out_pixels(), (band + 1) * split.band_rows);
        scalar_t* grad_image;
        if (split.bands > 1) {
          grad_image = o.grad_input_bands.template mutable_data_ptr<scalar_t>() + (band * g.batch + n) * image_size;
        } else {
          grad_image = in_place ? o.grad_input.template mutable_data_ptr<scalar_t>() + n * o.grad_input.stride(0)
                                : image_grad.mutable_data_ptr<scalar_t>();
          std::fill(grad_image, grad_image + image_size, scalar_t(0));
        }
        for (int64_t r0 = begin; r0 < end; r0 += kRowTile) {
          tile(r0, std::min(kRowTile, end - r0), grad_image, grad_wmat);
        }
        if (split.bands == 1 && !in_place) store_image_gradient(grad_image, o.grad_input, n, o.s.avx2_fma);
      }
    }
  });
}

// The second pass: the weight gradient. Task t is block t % blocks (a run of conv groups, or of one group's
// kernel points) of range t / blocks of the rows: it samples that block's columns and adds, group by group,
// grad_rows^T x them to the range's copy, a tile of rows at a time (with the group loops, each tile's sum
// apart first, as a GEMM per tile sums it). No two tasks write the same block of a copy.
template <typename scalar_t>
void backward_weight_gradient_pass(const BackwardOperands<scalar_t>& o) {
  const DeformConvGeometry& g = o.g;
  const BackwardSplit& split = o.split;
  const WeightGradientSplit& weights = split.weights;
  const at::TensorOptions options = o.grad_offset.options();
  const int64_t rows = g.batch * g.out_pixels();
  const int64_t out_cols = g.out_channels / g.groups;
  const int64_t weight_row = o.wmat.size(1);
  const int64_t cg = g.channels_per_group();
  const int64_t run = g.kernel_points() / weights.kernel_point_runs;
  const int64_t group_width = run * cg;               // a group's columns in a block
  const int64_t tile_rows = kRowTile * split.blocks;  // as many elements as a tile of kRowTile whole rows
  const ColumnLayout layout = o.loops ? ColumnLayout::PointMajor : ColumnLayout::GroupMajor;
  parallel_for_calling_ops(0, weights.row_ranges * split.blocks, [&](int64_t t0, int64_t t1) {
    at::Tensor cols = at::empty({tile_rows, weights.conv_groups * group_width}, options);
    scalar_t* cols_ptr = cols.mutable_data_ptr<scalar_t>();
    const GroupBlock block{weights.conv_groups, cg, out_cols, run};
    at::Tensor tile_sums = o.loops ? at::empty({group_width, block.outputs()}, options) : at::Tensor();
    const at::Tensor grad_buffer = o.grad_rows.buffer(tile_rows);
    WorkerImages<scalar_t> images(o.s, o.input);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t range = t / split.blocks;
      const int64_t group0 = t % split.blocks / weights.kernel_point_runs * weights.conv_groups;
      const int64_t k0 = t % weights.kernel_point_runs * run;
      const ColumnWindow window =
          ColumnWindow::conv_groups(g, group0, group0 + weights.conv_groups, k0, k0 + run, layout);
      // Samples the tiles of the range's rows in turn and hands each to add(len, its rows of grad_rows).
      const auto for_each_tile = [&](const auto& add) {
        const int64_t end = std::min(rows, (range + 1) * split.range_rows);
        for (int64_t r0 = range * split.range_rows; r0 < end; r0 += tile_rows) {
          const int64_t len = std::min(tile_rows, end - r0);
          sample_columns(images, r0, r0 + len, window, cols_ptr);
          add(len, o.grad_rows.rows(r0, len, grad_buffer, o.s.avx2_fma));
        }
      };
      if (o.loops) {
        // The block of the range's copy, grad_wmat[oc, k * cg + c'] for the block's output channels oc and
        // kernel points k; its first group's output 0 is column group0 of the (output-major) rows.
        scalar_t* grad_block = o.grad_wmat_copies[range].template mutable_data_ptr<scalar_t>() +
                               group0 * out_cols * weight_row + k0 * cg;
        scalar_t* sums = tile_sums.mutable_data_ptr<scalar_t>();
        for_each_tile([&](int64_t len, const at::Tensor& grad_tile) {
          run_hot_loop(o.s.avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
            add_group_loops_weight_gradient(block, len, grad_tile.const_data_ptr<scalar_t>() + group0, g.out_channels,
                                            g.groups, cols_ptr, sums, grad_block, weight_row);
          });
        });
        continue;
      }
      // Each group's block of the range's copy, made once per task.
      std::vector<at::Tensor> grad_blocks;
      for (int64_t group = group0; group < group0 + weights.conv_groups; ++group) {
        grad_blocks.push_back(
            o.grad_wmat_copies[range].narrow(0, group * out_cols, out_cols).narrow(1, k0 * cg, group_width));
      }
      for_each_tile([&](int64_t len, const at::Tensor& grad_tile) {
        const at::Tensor tile = cols.narrow(0, 0, len);
        for (int64_t i = 0; i < weights.conv_groups; ++i) {
          add_weight_gradient_block(grad_blocks[i], grad_tile.narrow(1, (group0 + i) * out_cols, out_cols),
                                    tile.narrow(1, i * group_width, group_width), o.onednn_weight_gradient);
        }
      });
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& weight, const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DeformConvGeometry g = check_deform_conv2d_backward_args(grad_output, input, offset, weight,
                                                                 mask, stride, padding, dilation);
  check_cpu_image_size(g);
  // Where the forward takes bfloat16 GEMMs, the columns' gradient comes from bfloat16 GEMMs too (summed in
  // float32 and rounded once, as the CUDA backward's 16-bit buffer holds it); the rest computes in
  // float32, the weight gradient's GEMMs included, which sum over every row and round once at the end.
  const bool gemms16 = bfloat16_gemms(input, g);
  if (computed_in_float(input) && !gemms16) {
    const auto [gi, go, gw, gm] =
        deform_conv2d_backward_cpu(grad_output.to(at::kFloat), input.to(at::kFloat), offset.to(at::kFloat),
                                   weight.to(at::kFloat), to_float(mask), stride, padding, dilation);
    const at::ScalarType t = input.scalar_type();
    return {gi.to(t), go.to(t), gw.to(t), gm.to(t)};
  }
  if (!gemms16) check_cpu_dtype(input);
  // The dtype of the sampling, its gradients and the weight gradient's sums.
  const at::ScalarType computed = gemms16 ? at::kFloat : input.scalar_type();
  const at::TensorOptions options = input.options().dtype(computed);
  const BackwardSplit split = backward_split(g, at::get_num_threads(),
                                             static_cast<int64_t>(c10::elementSize(computed)), split_copy_bytes());
  at::Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(output_memory_format(input)));
  const at::Tensor grad_input_bands =
      split.bands > 1 ? at::zeros({split.bands, g.batch, g.height, g.width, g.channels}, options) : at::Tensor();
  const at::Tensor offset_c = offset.to(computed);
  const std::optional<at::Tensor> mask_c = gemms16 ? to_float(mask) : mask;
  const OffsetMaskGradients sample_gradients = offset_mask_gradients(input, offset_c, mask_c, g);
  const at::Tensor wmat = cpu_weight_matrix(weight);  // in the GEMMs' dtype
  at::Tensor grad_wmat_copies = at::zeros({split.weight_copies(), wmat.size(0), wmat.size(1)}, options);
  if (g.batch * g.out_pixels() > 0 && g.out_channels > 0) {
    const bool loops = use_group_loops(g);
    const bool onednn = !loops && onednn_float_gemms(wmat);
    const PackedGroups packed_weight_t = onednn ? columns_gradient_weight(wmat, g.groups, kRowTile) : PackedGroups();
    // A second pass of several blocks reads a few of each row's channels a task: the rows copied once.
    const bool whole_rows = !split.weight_in_first_pass && split.blocks > 1;
    const GradRows grad_rows(grad_output, computed, loops, whole_rows, g);
    const std::optional<GradRows> grad_rows16 =
        gemms16 ? std::optional<GradRows>(std::in_place, grad_output, wmat.scalar_type(), loops, whole_rows, g)
                : std::nullopt;
    const at::Tensor zeros = at::zeros({g.channels}, options);
    // Copied whole, once, only where its pixels are not evenly spaced (height and width transposed, say).
    const at::Tensor images_in = evenly_spaced(input);
    const std::vector<kernels::KernelPoint> points = kernel_points(g);
    AT_DISPATCH_FLOATING_TYPES(computed, "deform_conv2d_backward_cpu", [&] {
      const Sampling<scalar_t> s = make_sampling<scalar_t>(g, images_in, offset_c, mask_c, zeros, points);
      const BackwardOperands<scalar_t> operands{
          g, s, images_in, split, loops, gemms16, onednn,
          // bfloat16 layers sum their weight gradient in float32 too.
          !loops && computed == at::kFloat && onednn_float_gemms_available(), grad_rows, grad_rows16,
          wmat, loops ? output_major(wmat, 0, g).t().contiguous() : at::Tensor(), packed_weight_t,
          grad_input, grad_input_bands, sample_gradients.offset,
          mask.has_value() ? sample_gradients.mask : at::Tensor(), grad_wmat_copies};
      backward_first_pass(operands);
      if (!split.weight_in_first_pass) backward_weight_gradient_pass(operands);
    });
    if (split.bands > 1) grad_input.permute({0, 2, 3, 1}).copy_(grad_input_bands.sum(0));
  } else {
    grad_input.zero_();
  }
  const at::Tensor grad_wmat = split.weight_copies() > 1 ? grad_wmat_copies.sum(0) : grad_wmat_copies.squeeze(0);
  return {grad_input, sample_gradients.offset.to(input.scalar_type()), cpu_weight_from_matrix(grad_wmat, weight),
          sample_gradients.mask.to(input.scalar_type())};
}

}  // namespace
}  // namespace cpu

const char* cpu_capability() { return cpu::use_avx2_fma() ? "avx2+fma" : "default"; }

bool cpu_bfloat16_gemms() { return cpu::onednn_on() && cpu::cpu_multiplies_bfloat16(); }

bool cpu_float32_gemms_in_onednn() { return cpu::onednn_float_gemms_available(); }

TORCH_LIBRARY_IMPL(rcm_fsad, CPU, m) {
  m.impl("deform_conv2d", &cpu::deform_conv2d_cpu);
  m.impl("deform_conv2d_backward", &cpu::deform_conv2d_backward_cpu);
}

}  // namespace rcm_fsad
