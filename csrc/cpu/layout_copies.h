// Copies between an image's NCHW planes (or any evenly spaced pixels) and NHWC rows: the CPU backend's
// transposes of input images, output tiles, output-gradient tiles and input-gradient images.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "../deform_conv2d_args.h"
#include "hot_loop.h"

namespace rcm_fsad::cpu {

// Both directions go a block of pixels at a time, so that the block's rows stay in L1 while each channel's
// run of the block is read or written. One thread, float32, against ATen's copy of a permuted image (the
// fastest block each way; a block of 64 pixels gathered 256 channels of 14x14 in 110 us):
//   channels, pixels      64, 56x56   128, 28x28   256, 14x14   256, 16x16   512, 7x7
//   ATen's copy           52 us       26 us        15 us        40 us        8 us
//   gather_rows (8)       44          22           11           14           6
//   store_planes (16)     31          14           7            9            4

// planes[oc * plane_stride + r] = rows[r * channels + oc] for the len rows of an NHWC tile: an image's
// pixels as NCHW planes (of type D, rounded where that is narrower).
template <typename S, typename D>
[[gnu::always_inline]] inline void store_planes(const S* rows, int64_t len, int64_t channels, D* planes,
                                                int64_t plane_stride) {
  constexpr int64_t kPixelBlock = 16;
  for (int64_t p0 = 0; p0 < len; p0 += kPixelBlock) {
    const int64_t block = std::min(kPixelBlock, len - p0);
    for (int64_t oc = 0; oc < channels; ++oc) {
      D* __restrict__ plane = planes + oc * plane_stride + p0;
      for (int64_t r = 0; r < block; ++r) plane[r] = static_cast<D>(rows[(p0 + r) * channels + oc]);
    }
  }
}
// rows[r * channels + column[oc]] = src[oc * channel_stride + r * pixel_stride] for r < len: a run of an
// image's pixels as rows (NHWC), from planes (pixel_stride 1) or any evenly spaced pixels.
template <typename S, typename D>
[[gnu::always_inline]] inline void gather_rows(const S* src, int64_t channel_stride, int64_t pixel_stride,
                                               int64_t len, int64_t channels, const int64_t* column, D* rows) {
  if (pixel_stride != 1) {
    for (int64_t r = 0; r < len; ++r) {
      for (int64_t oc = 0; oc < channels; ++oc) {
        rows[r * channels + column[oc]] = static_cast<D>(src[r * pixel_stride + oc * channel_stride]);
      }
    }
    return;
  }
  constexpr int64_t kPixelBlock = 8;
  for (int64_t p0 = 0; p0 < len; p0 += kPixelBlock) {
    const int64_t block = std::min(kPixelBlock, len - p0);
    for (int64_t oc = 0; oc < channels; ++oc) {
      const S* __restrict__ plane = src + oc * channel_stride + p0;
      D* __restrict__ out = rows + p0 * channels + column[oc];
      for (int64_t r = 0; r < block; ++r) out[r * channels] = static_cast<D>(plane[r]);
    }
  }
}


// The distance between consecutive pixels of an image of t (N, C, H, W), where they are evenly spaced:
// contiguous and channels_last tensors, slices of their rows or columns, expanded ones. (The strides of
// size-1 dimensions are arbitrary.)
inline std::optional<int64_t> pixel_stride(const at::Tensor& t) {
  if (t.size(2) * t.size(3) == 0) return 1;  // no pixels: any distance will do
  if (t.size(3) == 1) return t.stride(2);
  if (t.size(2) == 1 || t.stride(2) == t.size(3) * t.stride(3)) return t.stride(3);
  return std::nullopt;
}

// t itself where its images' pixels are evenly spaced (pixel_stride), else a contiguous copy: what the
// gathers below read.
inline at::Tensor evenly_spaced(const at::Tensor& t) { return pixel_stride(t).has_value() ? t : t.contiguous(); }

// gather_rows of pixels [pixel0, pixel0 + len) of image n of t (N, C, H, W; floating or bfloat16, its pixels
// `stride` apart), converted to D.
template <typename D>
void gather_image_rows(const at::Tensor& t, int64_t n, int64_t pixel0, int64_t len, int64_t stride,
                       const int64_t* column, D* rows, bool avx2_fma) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.scalar_type(), "gather_image_rows", [&] {
    const scalar_t* src = t.const_data_ptr<scalar_t>() + n * t.stride(0) + pixel0 * stride;
    run_hot_loop(avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
      gather_rows(src, t.stride(1), stride, len, t.size(1), column, rows);
    });
  });
}

// A weight (C_out, C_in/groups, kh, kw) is a batch of C_out images of C_in/groups channels and kh x kw
// pixels, and the GEMMs' matrix (C_out, kh*kw*C_in/groups) their NHWC rows: the two transposes below move
// between them, an output channel a task, in place of ATen's copies of the permuted weight (one thread, 256
// channels: 169 us that way, where a plain copy of the weight takes 38 us).

// weight_matrix(weight) (deform_conv2d_args.h), in weight's dtype.
inline at::Tensor cpu_weight_matrix(const at::Tensor& weight) {
  const std::optional<int64_t> stride = pixel_stride(weight);
  // channels_last: the matrix is a view of the weight.
  if (!stride.has_value() || weight.stride(1) == 1) return weight_matrix(weight);
  const int64_t points = weight.size(2) * weight.size(3);
  const int64_t channels = weight.size(1);
  at::Tensor matrix = at::empty({weight.size(0), points * channels}, weight.options());
  std::vector<int64_t> column(channels);
  for (int64_t c = 0; c < channels; ++c) column[c] = c;
  const bool avx2_fma = use_avx2_fma();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, weight.scalar_type(), "cpu_weight_matrix", [&] {
    const scalar_t* planes = weight.const_data_ptr<scalar_t>();
    scalar_t* rows = matrix.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, weight.size(0), at::internal::GRAIN_SIZE / std::max<int64_t>(1, matrix.size(1)),
                     [&](int64_t o0, int64_t o1) {
                       run_hot_loop(avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
                         for (int64_t o = o0; o < o1; ++o) {
                           gather_rows(planes + o * weight.stride(0), weight.stride(1), *stride, points, channels,
                                       column.data(), rows + o * matrix.size(1));
                         }
                       });
                     });
  });
  return matrix;
}

// weight_from_matrix(matrix, weight) (deform_conv2d_args.h): matrix (C_out, kh*kw*C_in/groups) contiguous,
// of the sums' dtype, as a new tensor of weight's shape, dtype and memory format.
inline at::Tensor cpu_weight_from_matrix(const at::Tensor& matrix, const at::Tensor& weight) {
  if (output_memory_format(weight) == at::MemoryFormat::ChannelsLast) return weight_from_matrix(matrix, weight);
  at::Tensor result = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t points = weight.size(2) * weight.size(3);
  const int64_t channels = weight.size(1);
  const bool avx2_fma = use_avx2_fma();
  AT_DISPATCH_FLOATING_TYPES(matrix.scalar_type(), "cpu_weight_from_matrix", [&] {
    using sums_t = scalar_t;
    const sums_t* rows = matrix.const_data_ptr<sums_t>();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, weight.scalar_type(), "cpu_weight_from_matrix", [&] {
      scalar_t* planes = result.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, weight.size(0), at::internal::GRAIN_SIZE / std::max<int64_t>(1, matrix.size(1)),
                       [&](int64_t o0, int64_t o1) {
                         run_hot_loop(avx2_fma, [&]() RCM_FSAD_HOT_LOOP {
                           for (int64_t o = o0; o < o1; ++o) {
                             store_planes(rows + o * matrix.size(1), points, channels,
                                          planes + o * matrix.size(1), points);
                           }
                         });
                       });
    });
  });
  return result;
}

}  // namespace rcm_fsad::cpu
