// What the CUDA launchers of deform_conv2d (forward and backward) share: the grid-stride launch sizes,
// the chunking of the columns buffer's rows, and the sampled tensors' pointers and strides.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <optional>

#include "../deform_conv2d_args.h"
#include "../kernels/deform_conv2d_kernels.cuh"

namespace rcm_fsad {

// Threads a block of the grid-stride kernels.
constexpr int kThreads = 256;
// Columns elements per chunk: 64M elements keeps the buffer at 256 MB in float32.
constexpr int64_t kChunkElements = int64_t(1) << 26;
// The most blocks a grid-stride kernel is launched with: its threads loop over the rest.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;

// At most as many rows as the environment variable `name` says, for tests of the chunked paths on
// problems small enough to be one chunk otherwise (unset: no limit): a positive integer, or an
// error naming the variable.
inline int64_t rows_limit(const char* name) {
  const char* text = std::getenv(name);
  if (text == nullptr) return std::numeric_limits<int64_t>::max();
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  TORCH_CHECK(end != text && *end == '\0' && value > 0, name, " must be a positive number of rows, got '", text,
              "'");
  return static_cast<int64_t>(value);
}

// Rows of the columns buffer (the columns path, the backward): at most kChunkElements elements, or
// RCM_FSAD_CHUNK_ROWS rows.
inline int64_t chunk_rows(const kernels::DeformConvGeometry& g) {
  const int64_t rows = std::min(kChunkElements / g.column_width(), rows_limit("RCM_FSAD_CHUNK_ROWS"));
  return std::max<int64_t>(1, std::min(g.batch * g.out_pixels(), rows));
}

inline int blocks_for(int64_t work_items, int64_t items_per_block) {
  return static_cast<int>(std::min(kMaxBlocks, (work_items + items_per_block - 1) / items_per_block));
}

// 32-bit loop indices whenever the grid-stride loop cannot overflow them.
inline bool fits_int32(int64_t total) {
  return total + kMaxBlocks * kThreads < std::numeric_limits<int32_t>::max();
}

// Calls f with a value of the index type of grid-stride kernels over `total` items: int32_t where
// fits_int32, int64_t otherwise.
template <typename F>
void with_index_type(int64_t total, F&& f) {
  if (fits_int32(total)) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

// What a kernel samples: the input in NHWC, and the offset and the mask (null: none) with their strides.
template <typename scalar_t>
struct ChunkArgs {
  const scalar_t* input;
  const scalar_t* offset;
  kernels::FieldStrides offset_strides;
  const scalar_t* mask;
  kernels::FieldStrides mask_strides;
};

template <typename scalar_t>
ChunkArgs<scalar_t> chunk_args(const at::Tensor& input_nhwc, const at::Tensor& offset,
                               const std::optional<at::Tensor>& mask) {
  return {input_nhwc.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(),
          field_strides(offset), mask.has_value() ? mask->const_data_ptr<scalar_t>() : nullptr,
          mask.has_value() ? field_strides(*mask) : kernels::FieldStrides{0, 0, 0, 0}};
}

// A sampling kernel (deform_im2col_kernel, deform_col2im_kernel) over `rows` rows with `lanes` lanes a
// sample (kernels::lanes_per_sample): launch(index, lanes_type, blocks) launches it with index_t =
// decltype(index), kLanes = decltype(lanes_type)::value and `blocks` blocks of kThreads.
template <typename Launch>
void launch_sampling(const kernels::DeformConvGeometry& g, int64_t rows, int lanes, Launch&& launch) {
  const int64_t warps = kernels::sample_warps(g, rows, lanes);
  const int blocks = blocks_for(warps, kThreads / kernels::kWarpSize);
  with_index_type(warps * kernels::kWarpSize, [&](auto index) {
    kernels::with_sample_lanes(lanes, [&](auto lanes_type) { launch(index, lanes_type, blocks); });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace rcm_fsad
