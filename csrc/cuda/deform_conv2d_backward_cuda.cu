// The CUDA launcher of deform_conv2d's backward (the forward's is deform_conv2d_forward_cuda.cu). It
// takes the columns path without recomputing the columns in a kernel of their own: the
// columns' gradient (a GEMM), then deform_col2im_kernel, which scatters the input gradient with float
// atomics and writes the columns from the corners it reads for the offset gradient, then the weight
// gradient's GEMM on them. Under torch.use_deterministic_algorithms
// that scatter is off and the input gradient is gathered instead, without atomics: a table of the
// samples (deform_sample_table_kernel), the keys of their corners (deform_sample_keys_kernel) sorted
// stably, then each input element that a corner reaches summed by one thread, its corners in row
// order (deform_col2im_input_gather_kernel). Every kernel of the backward is then deterministic, and the
// GEMMs are cuBLAS's on one stream, deterministic under PyTorch's own rules (some versions of PyTorch
// raise until CUBLAS_WORKSPACE_CONFIG is set).
// Kernel bodies live in ../kernels/.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "../deform_conv2d_args.h"
#include "../kernels/deform_conv2d_kernels.cuh"
#include "device_queries.h"
#include "launch_common.h"
#include "layout_cuda.h"

namespace rcm_fsad {
namespace {

using kernels::DeformConvGeometry;
using kernels::FieldStrides;

// The deterministic input gradient's sample table (deform_sample_table_kernel) covers at most this
// many bytes of rows at a time. Each piece also takes its corners' keys (32 bytes an entry), their
// sort (about as much again, PyTorch's) and the runs' starts (16 bytes per (input pixel, offset group)
// of the piece's images): about 4 times this in all.
constexpr int64_t kDeterministicTableBytes = int64_t(64) << 20;

template <typename scalar_t>
void launch_col2im(const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a, int64_t first_row,
                   int64_t rows, const scalar_t* grad_columns, at::opmath_type<scalar_t>* grad_input,
                   scalar_t* grad_offset, FieldStrides gos, scalar_t* grad_mask, FieldStrides gms,
                   scalar_t* columns) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lanes = kernels::lanes_per_sample<scalar_t>(
      g, kernels::col2im_vectors(g, a.input, grad_columns, grad_input, columns));
  launch_sampling(g, rows, lanes, [&](auto index, auto lanes_type, int blocks) {
    using index_t = decltype(index);
    kernels::deform_col2im_kernel<scalar_t, acc_t, index_t, decltype(lanes_type)::value>
        <<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            g, a.input, a.offset, a.offset_strides, a.mask, a.mask_strides, first_row, static_cast<index_t>(rows),
            grad_columns, grad_input, grad_offset, gos, grad_mask, gms, columns);
  });
}

// Rows per piece of the deterministic input gradient: its sample table (one MaskedCorners per
// (row, kernel point, offset group)) stays within kDeterministicTableBytes, or RCM_FSAD_TABLE_ROWS
// rows.
int64_t deterministic_table_rows(const DeformConvGeometry& g, int64_t chunk, int64_t entry_bytes) {
  const int64_t row_bytes = g.kernel_points() * g.offset_groups * entry_bytes;
  return std::clamp<int64_t>(std::min(kDeterministicTableBytes / row_bytes, rows_limit("RCM_FSAD_TABLE_ROWS")), 1,
                             chunk);
}

// The deterministic input gradient of rows [first_row, first_row + rows), whose columns gradient
// starts at grad_columns, added to grad_input: in pieces of at most table_rows rows, in row order, the
// piece's sample table (deform_sample_table_kernel into `table`), the keys of its corners
// (deform_sample_keys_kernel), their stable sort and the start of each key's run (PyTorch's sort and
// searchsorted, both deterministic), then deform_col2im_input_gather_kernel.
template <typename scalar_t>
void launch_col2im_input_deterministic(const DeformConvGeometry& g, const ChunkArgs<scalar_t>& a,
                                       int64_t first_row, int64_t rows, int64_t table_rows,
                                       const scalar_t* grad_columns, at::Tensor& table,
                                       at::opmath_type<scalar_t>* grad_input) {
  // An image of no pixels (its output all padding) has no input gradient to gather, and the gather's
  // grid would have no blocks, which CUDA refuses.
  if (g.height * g.width == 0) return;
  using acc_t = at::opmath_type<scalar_t>;
  using Corners = kernels::MaskedCorners<acc_t>;
  Corners* entries = reinterpret_cast<Corners*>(table.mutable_data_ptr<uint8_t>());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::TensorOptions index_options = table.options().dtype(at::kLong);
  const int64_t image_keys = g.height * g.width * g.offset_groups;
  for (int64_t p0 = first_row; p0 < first_row + rows; p0 += table_rows) {
    const int64_t len = std::min(table_rows, first_row + rows - p0);
    const scalar_t* gc = grad_columns + (p0 - first_row) * g.column_width();
    const int64_t entries_total = kernels::sample_count(g, len);
    const int64_t first_image = p0 / g.out_pixels();
    const int64_t images = (p0 + len - 1) / g.out_pixels() - first_image + 1;
    const int64_t elements = images * g.height * g.width * g.channels;
    at::Tensor keys = at::empty({4 * entries_total}, index_options);
    with_index_type(std::max(4 * entries_total, elements), [&](auto index) {
      using index_t = decltype(index);
      kernels::deform_sample_table_kernel<scalar_t, acc_t, index_t><<<blocks_for(entries_total, kThreads), kThreads,
                                                                       0, stream>>>(
          g, a.offset, a.offset_strides, a.mask, a.mask_strides, p0, static_cast<index_t>(len), entries);
      kernels::deform_sample_keys_kernel<acc_t, index_t><<<blocks_for(4 * entries_total, kThreads), kThreads, 0,
                                                           stream>>>(g, entries, static_cast<index_t>(entries_total),
                                                                     keys.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const auto [sorted, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
      // Where the run of each key of these images begins, and where the last one ends.
      const at::Tensor starts = at::searchsorted(
          sorted, at::arange(first_image * image_keys, (first_image + images) * image_keys + 1, index_options));
      // The kernel visits only the band of pixels the piece's corners reach, which the host does not
      // know: a grid the device holds at once strides over it, where one sized to the images would
      // schedule mostly blocks with nothing to do on a large image.
      const auto gather = kernels::deform_col2im_input_gather_kernel<scalar_t, acc_t, index_t>;
      const int64_t resident = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} *
                               resident_blocks_per_sm(gather, kThreads, 0);
      gather<<<std::min<int64_t>(blocks_for(elements, kThreads), resident), kThreads, 0, stream>>>(
          g, entries, order.const_data_ptr<int64_t>(), sorted.const_data_ptr<int64_t>(),
          starts.const_data_ptr<int64_t>(), p0, static_cast<index_t>(len), gc, grad_input);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
    const at::Tensor& weight, const std::optional<at::Tensor>& mask, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation) {
  const DeformConvGeometry g = check_deform_conv2d_backward_args(grad_output, input, offset, weight,
                                                                 mask, stride, padding, dilation);
  // Under torch.use_deterministic_algorithms, no atomic scatter (its sums depend on the order the
  // atomics land in): so nothing here calls alertNotDeterministic.
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const c10::cuda::CUDAGuard guard(input.device());
  check_build_runs_on_device();
  const at::ScalarType acc_type = at::toOpMathType(input.scalar_type());
  at::Tensor grad_input = at::zeros({g.batch, g.height, g.width, g.channels}, input.options().dtype(acc_type));
  OffsetMaskGradients sample_gradients = offset_mask_gradients(input, offset, mask, g);
  at::Tensor grad_offset = sample_gradients.offset;
  at::Tensor grad_mask = sample_gradients.mask;
  const at::Tensor wmat = weight_matrix(weight);
  // In acc_type: summed over every chunk of rows, rounded to the weight's dtype once.
  at::Tensor grad_wmat = at::zeros(wmat.sizes(), wmat.options().dtype(acc_type));
  const int64_t rows = g.batch * g.out_pixels();
  if (rows > 0 && g.out_channels > 0) {
    const at::Tensor input_nhwc = channels_last_cuda(input);
    const at::Tensor grad_rows = channels_last_cuda(grad_output).permute({0, 2, 3, 1}).reshape({rows, g.out_channels});
    const int64_t chunk = chunk_rows(g);
    at::Tensor cols = at::empty({chunk, g.column_width()}, input.options());
    at::Tensor grad_cols = at::empty({chunk, g.column_width()}, input.options());
    const int64_t entry_bytes = acc_type == at::kDouble ? sizeof(kernels::MaskedCorners<double>)
                                                        : sizeof(kernels::MaskedCorners<float>);
    const int64_t table_rows = deterministic ? deterministic_table_rows(g, chunk, entry_bytes) : 0;
    at::Tensor table = at::empty({table_rows * g.kernel_points() * g.offset_groups * entry_bytes},
                                 input.options().dtype(at::kByte));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "deform_conv2d_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const ChunkArgs<scalar_t> a = chunk_args<scalar_t>(input_nhwc, offset, mask);
      const FieldStrides gos = field_strides(grad_offset);
      const FieldStrides gms = mask.has_value() ? field_strides(grad_mask) : FieldStrides{0, 0, 0, 0};
      scalar_t* gm_ptr = mask.has_value() ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr;
      for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t len = std::min(chunk, rows - r0);
        at::Tensor grad_cols_chunk = grad_cols.narrow(0, 0, len);
        columns_gradient(grad_rows.narrow(0, r0, len), wmat, grad_cols_chunk, g);
        const scalar_t* gc_ptr = grad_cols.const_data_ptr<scalar_t>();
        acc_t* gi_ptr = grad_input.mutable_data_ptr<acc_t>();
        launch_col2im<scalar_t>(g, a, r0, len, gc_ptr, deterministic ? nullptr : gi_ptr,
                                grad_offset.mutable_data_ptr<scalar_t>(), gos, gm_ptr, gms,
                                cols.mutable_data_ptr<scalar_t>());
        add_weight_gradient(grad_rows.narrow(0, r0, len), cols.narrow(0, 0, len), grad_wmat, g);
        if (deterministic) {
          launch_col2im_input_deterministic<scalar_t>(g, a, r0, len, table_rows, gc_ptr, table, gi_ptr);
        }
      }
    });
  }
  return {from_nhwc_cuda(grad_input, input.scalar_type(), output_memory_format(input)), grad_offset,
          weight_from_matrix(grad_wmat, weight), grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(rcm_fsad, CUDA, m) { m.impl("deform_conv2d_backward", &deform_conv2d_backward_cuda); }

}  // namespace rcm_fsad
