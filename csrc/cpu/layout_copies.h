// Copies between an image's NCHW planes (or any evenly spaced pixels) and NHWC rows: the CPU backend's
// transposes of input images, output tiles, output-gradient tiles and input-gradient images.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>
#include <optional>

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

}  // namespace rcm_fsad::cpu
