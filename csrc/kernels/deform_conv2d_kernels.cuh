// CUDA kernel bodies of the direct (columns-based) DCNv2 path. Torch-free: launched by
// csrc/cuda/deform_conv2d_cuda.cu, and by the CPU emulation harness.
#pragma once

#include "deform_conv2d_math.cuh"

namespace rcm_fsad {
namespace kernels {

constexpr int kWarpSize = 32;

// columns[r, column_index(c, k)] = mask * bilinear sample, for rows first_row .. first_row+rows-1.
// One thread per (row, kernel point, channel): consecutive threads walk channels, so both the NHWC
// corner reads and the column writes are coalesced.
// input: NHWC (N, H, W, C); columns: (rows, C*K).
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void deform_im2col_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                                     const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                                     const scalar_t* __restrict__ mask, FieldStrides mask_strides,
                                     int64_t first_row, index_t rows, scalar_t* __restrict__ columns) {
  const index_t channels = static_cast<index_t>(g.channels);
  const index_t points = static_cast<index_t>(g.kernel_points());
  const index_t total = rows * points * channels;
  const index_t step = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += step) {
    const index_t c = idx % channels;
    const index_t t = idx / channels;
    const index_t k = t % points;
    const index_t r = t / points;
    const OutputPixel px = output_pixel(g, first_row + r);
    const int64_t n = px.n, oy = px.oy, ox = px.ox;
    const int64_t og = c / g.channels_per_offset_group();
    const SamplePoint<acc_t> p =
        deform_sample_point<acc_t>(g, offset, offset_strides, n, og, k, oy, ox);
    const acc_t m = modulation<acc_t>(g, mask, mask_strides, n, og, k, oy, ox);
    const scalar_t* image = input + n * g.height * g.width * g.channels;
    const acc_t v = interpolate(p, corner_value(p, 0, image, g.channels, c),
                                corner_value(p, 1, image, g.channels, c),
                                corner_value(p, 2, image, g.channels, c),
                                corner_value(p, 3, image, g.channels, c));
    columns[static_cast<int64_t>(r) * g.column_width() + g.column_index(c, k)] =
        static_cast<scalar_t>(m * v);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int delta = kWarpSize / 2; delta > 0; delta /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, delta);
  }
  return v;
}

// Backward of the sampling step for rows first_row .. first_row+rows-1, given the gradient of the
// columns. One warp per (row, kernel point, offset group): the lanes walk the group's channels,
// scatter into grad_input (atomics: samples of different rows share pixels) and sum the offset and
// mask gradients, which the warp then reduces and writes without atomics (each warp owns them).
// grad_input: NHWC, accumulated in acc_t; null skips the scatter (the deterministic backward
// computes it with deform_col2im_input_deterministic_kernel instead). grad_mask may be null (DCNv1).
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void deform_col2im_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                                     const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                                     const scalar_t* __restrict__ mask, FieldStrides mask_strides,
                                     int64_t first_row, index_t rows,
                                     const scalar_t* __restrict__ grad_columns,
                                     acc_t* __restrict__ grad_input,
                                     scalar_t* __restrict__ grad_offset, FieldStrides grad_offset_strides,
                                     scalar_t* __restrict__ grad_mask, FieldStrides grad_mask_strides) {
  const int lane = threadIdx.x % kWarpSize;
  const index_t warps_per_block = blockDim.x / kWarpSize;
  const index_t points = static_cast<index_t>(g.kernel_points());
  const index_t groups = static_cast<index_t>(g.offset_groups);
  const index_t total = rows * points * groups;
  const index_t step = warps_per_block * gridDim.x;
  const int64_t cpog = g.channels_per_offset_group();
  for (index_t w = static_cast<index_t>(blockIdx.x) * warps_per_block + threadIdx.x / kWarpSize;
       w < total; w += step) {
    const index_t og = w % groups;
    const index_t t = w / groups;
    const index_t k = t % points;
    const index_t r = t / points;
    const OutputPixel px = output_pixel(g, first_row + r);
    const int64_t n = px.n, oy = px.oy, ox = px.ox;
    const SamplePoint<acc_t> p =
        deform_sample_point<acc_t>(g, offset, offset_strides, n, og, k, oy, ox);
    const acc_t m = modulation<acc_t>(g, mask, mask_strides, n, og, k, oy, ox);
    const int64_t image_base = n * g.height * g.width * g.channels;
    const scalar_t* image = input + image_base;
    // Tested per corner, not around the corner loop: that form took registers enough to cost
    // occupancy in ptxas, this one none.
    const bool scatter = grad_input != nullptr;
    acc_t* grad_image = scatter ? grad_input + image_base : nullptr;
    const scalar_t* grad_row = grad_columns + static_cast<int64_t>(r) * g.column_width();
    acc_t sum_dy = 0, sum_dx = 0, sum_value = 0;
    for (int64_t c = og * cpog + lane; c < (og + 1) * cpog; c += kWarpSize) {
      const acc_t gcol = static_cast<acc_t>(grad_row[g.column_index(c, k)]);
      const acc_t v00 = corner_value(p, 0, image, g.channels, c);
      const acc_t v01 = corner_value(p, 1, image, g.channels, c);
      const acc_t v10 = corner_value(p, 2, image, g.channels, c);
      const acc_t v11 = corner_value(p, 3, image, g.channels, c);
      const CoordinateGradient<acc_t> d = coordinate_gradient(p, v00, v01, v10, v11);
      sum_dy += gcol * d.dy;
      sum_dx += gcol * d.dx;
      sum_value += gcol * interpolate(p, v00, v01, v10, v11);
      const acc_t gm = gcol * m;
      for (int i = 0; i < 4; ++i) {
        if (scatter && p.valid[i]) atomicAdd(grad_image + p.pixel[i] * g.channels + c, p.weight[i] * gm);
      }
    }
    sum_dy = warp_sum(sum_dy);
    sum_dx = warp_sum(sum_dx);
    sum_value = warp_sum(sum_value);
    if (lane == 0) {
      const int64_t ch = 2 * (og * points + k);
      grad_offset[grad_offset_strides.at(n, ch, oy, ox)] = static_cast<scalar_t>(m * sum_dy);
      grad_offset[grad_offset_strides.at(n, ch + 1, oy, ox)] = static_cast<scalar_t>(m * sum_dx);
      if (grad_mask != nullptr) {
        grad_mask[grad_mask_strides.at(n, og * points + k, oy, ox)] =
            static_cast<scalar_t>(sum_value);
      }
    }
  }
}

// The input gradient of deform_col2im_kernel without atomics, bitwise reproducible: for rows
// first_row .. first_row+rows-1, adds what their samples scatter into grad_bands, one partial
// NHWC input gradient per band of band_rows output pixels of every image (band b of image n: its
// output pixels [b*band_rows, (b+1)*band_rows)); the caller sums the bands in a fixed order.
// Channel c of image n only receives contributions from channel c of that image's rows, so one
// thread owns one (image, band, channel) plane and adds into it with plain read-modify-writes,
// walking its rows and then the kernel points in a fixed order: no races, and the same additions
// in the same order whatever the launch configuration (and whatever the chunking, chunks being
// launched in row order). Bands multiply the threads (images x channels alone rarely fill a GPU) at
// the cost of one partial gradient each. Consecutive threads take consecutive channels, so the NHWC
// updates and the grad_columns reads coalesce.
// grad_bands: (bands, N, H, W, C), bands = ceil(H_out*W_out / band_rows).
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void deform_col2im_input_deterministic_kernel(
    DeformConvGeometry g, const scalar_t* __restrict__ offset, FieldStrides offset_strides,
    const scalar_t* __restrict__ mask, FieldStrides mask_strides, int64_t first_row, index_t rows,
    int64_t band_rows, const scalar_t* __restrict__ grad_columns, acc_t* __restrict__ grad_bands) {
  const index_t channels = static_cast<index_t>(g.channels);
  const index_t points = static_cast<index_t>(g.kernel_points());
  const int64_t pixels = g.out_pixels();
  const int64_t bands = (pixels + band_rows - 1) / band_rows;
  const int64_t first_image = first_row / pixels;
  const index_t images = static_cast<index_t>((first_row + rows - 1) / pixels - first_image + 1);
  const index_t total = images * static_cast<index_t>(bands) * channels;
  const index_t step = static_cast<index_t>(blockDim.x) * gridDim.x;
  const int64_t cpog = g.channels_per_offset_group();
  const int64_t image_size = g.height * g.width * g.channels;
  for (index_t idx = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += step) {
    const index_t c = idx % channels;
    const int64_t band = (idx / channels) % bands;
    const int64_t n = first_image + idx / channels / bands;
    const int64_t og = c / cpog;
    acc_t* grad_plane = grad_bands + (band * g.batch + n) * image_size + c;
    // The rows of this band of image n within this launch, relative to first_row.
    const int64_t band_begin = n * pixels + band * band_rows;
    const int64_t band_end = min_of(band_begin + band_rows, (n + 1) * pixels);
    const index_t r_begin = static_cast<index_t>(max_of(int64_t(0), band_begin - first_row));
    const index_t r_end = static_cast<index_t>(max_of(int64_t(0), min_of(rows + first_row, band_end) - first_row));
    for (index_t r = r_begin; r < r_end; ++r) {
      const OutputPixel px = output_pixel(g, first_row + r);
      const scalar_t* grad_row = grad_columns + static_cast<int64_t>(r) * g.column_width();
      for (index_t k = 0; k < points; ++k) {
        const SamplePoint<acc_t> p =
            deform_sample_point<acc_t>(g, offset, offset_strides, n, og, k, px.oy, px.ox);
        const acc_t gm = static_cast<acc_t>(grad_row[g.column_index(c, k)]) *
                         modulation<acc_t>(g, mask, mask_strides, n, og, k, px.oy, px.ox);
        for (int i = 0; i < 4; ++i) {
          if (p.valid[i]) grad_plane[p.pixel[i] * g.channels] += p.weight[i] * gm;
        }
      }
    }
  }
}

}  // namespace kernels
}  // namespace rcm_fsad
