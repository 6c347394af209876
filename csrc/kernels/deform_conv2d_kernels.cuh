// CUDA kernel bodies of the direct (columns-based) DCNv2 path. Torch-free: launched by
// csrc/cuda/deform_conv2d_forward_cuda.cu and deform_conv2d_backward_cuda.cu, and by the CPU emulation harness.
#pragma once

#include <type_traits>

#include "deform_conv2d_math.cuh"
#include "vector16.cuh"

namespace rcm_fsad {
namespace kernels {

constexpr int kWarpSize = 32;

// The sum of v over each aligned group of kLanes lanes (8, 16 or 32), in every lane of the group: the
// shuffles' lane masks stay within a group. Every lane of the warp must call it.
template <int kLanes, typename acc_t>
__device__ __forceinline__ acc_t lane_group_sum(acc_t v) {
  for (int delta = kLanes / 2; delta > 0; delta /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, delta);
  }
  return v;
}

// Work item w of the sampling kernels, which give 8, 16 or 32 lanes (or, for the sample table, a
// thread) to each (row, kernel point, offset group), offset group fastest: the sample point, with its
// 64-bit divisions, is computed once per item and serves every channel of the offset group.
template <typename index_t>
struct SampleIndex {
  index_t r;  // row, relative to first_row
  index_t k;
  index_t og;
};

template <typename index_t>
RCM_HD SampleIndex<index_t> sample_index(const DeformConvGeometry& g, index_t w) {
  const index_t groups = static_cast<index_t>(g.offset_groups);
  const index_t points = static_cast<index_t>(g.kernel_points());
  const index_t t = w / groups;
  return {t / points, t % points, w % groups};
}

// deform_im2col_kernel's blocks of (at most) 256 threads per SM: for float accumulation 4 (a
// register budget of 64; its vector path would take 72 to 82 and cost a quarter of the occupancy
// of a latency-bound gather), for double 2 (64 spills).
template <typename acc_t>
constexpr int kIm2colBlocksPerSM = sizeof(acc_t) == 4 ? 4 : 2;

// Whether deform_im2col_kernel moves 16-byte vectors of channels: every run of channels is whole
// vectors and the bases are aligned (a columns row, C*K wide, then starts on a vector too).
template <typename scalar_t>
RCM_HD bool im2col_vectors(const DeformConvGeometry& g, const scalar_t* input, const scalar_t* columns) {
  return g.channel_runs_are_multiples_of(Vector16<scalar_t>::kSize) && aligned16(input) && aligned16(columns);
}

// The lanes of the sampling kernels (deform_im2col_kernel, deform_col2im_kernel) that share a sample:
// as many as an offset group's channels take (16-byte vectors of them where `vectors`, else single
// channels), rounded up to 8, 16 or 32. With few channels (64 in float: 16 vectors) the warp's other
// lanes take other samples instead of idling, and a sample's index arithmetic and field loads are
// shared by fewer lanes.
template <typename scalar_t>
RCM_HD int lanes_per_sample(const DeformConvGeometry& g, bool vectors) {
  const int64_t per_lane = vectors ? Vector16<scalar_t>::kSize : 1;
  const int64_t needed = (g.channels_per_offset_group() + per_lane - 1) / per_lane;
  return needed > 16 ? 32 : needed > 8 ? 16 : 8;
}

// f(std::integral_constant<int, lanes>{}) for lanes_per_sample's answer: the one place that turns it
// into the kernels' template argument.
template <typename F>
decltype(auto) with_sample_lanes(int lanes, F&& f) {
  switch (lanes) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 16: return f(std::integral_constant<int, 16>{});
    default: return f(std::integral_constant<int, 32>{});
  }
}

// The samples of `rows` rows, one per (row, kernel point, offset group).
RCM_HD int64_t sample_count(const DeformConvGeometry& g, int64_t rows) {
  return rows * g.kernel_points() * g.offset_groups;
}

// The warps of a sampling kernel with `lanes` lanes a sample, for `rows` rows (a grid of fewer loops
// over them).
RCM_HD int64_t sample_warps(const DeformConvGeometry& g, int64_t rows, int lanes) {
  return (sample_count(g, rows) * lanes + kWarpSize - 1) / kWarpSize;
}

// columns[r, column_index(c, k)] = mask * bilinear sample, for rows first_row .. first_row+rows-1.
// kLanes lanes (8, 16 or 32: lanes_per_sample) per (row, kernel point, offset group)
// (sample_index), a warp's samples consecutive: they walk the group's channels, so the NHWC corner
// reads and the column writes are coalesced; 16 bytes of channels per lane and access where
// im2col_vectors, one channel otherwise.
// Grid: sample_warps warps (a grid-stride loop covers the rest).
// input: NHWC (N, H, W, C); columns: (rows, C*K).
template <typename scalar_t, typename acc_t, typename index_t, int kLanes>
__global__ void __launch_bounds__(256, kIm2colBlocksPerSM<acc_t>)
    deform_im2col_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                         const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                         const scalar_t* __restrict__ mask, FieldStrides mask_strides, int64_t first_row,
                         index_t rows, scalar_t* __restrict__ columns) {
  static_assert(kLanes == 8 || kLanes == 16 || kLanes == 32, "kLanes: 8, 16 or 32");
  const int lane = threadIdx.x % kLanes;  // of the sample's
  const index_t samples_per_block = blockDim.x / kLanes;
  const index_t total = rows * static_cast<index_t>(g.kernel_points()) * static_cast<index_t>(g.offset_groups);
  const index_t step = samples_per_block * gridDim.x;
  const int64_t cpog = g.channels_per_offset_group();
  constexpr int kVector = Vector16<scalar_t>::kSize;
  const bool vectors = im2col_vectors(g, input, columns);
  for (index_t w = static_cast<index_t>(blockIdx.x) * samples_per_block + threadIdx.x / kLanes; w < total;
       w += step) {
    const SampleIndex<index_t> item = sample_index(g, w);
    const MaskedCorners<acc_t> s = masked_corners<acc_t>(g, first_row + item.r, item.k, item.og, offset,
                                                         offset_strides, mask, mask_strides);
    const scalar_t* corner[4];
    for (int i = 0; i < 4; ++i) corner[i] = s.pixel[i] >= 0 ? input + s.pixel[i] * g.channels : nullptr;
    scalar_t* col_row = columns + static_cast<int64_t>(item.r) * g.column_width();
    for (int64_t c0 = item.og * cpog, c1; c0 < (item.og + 1) * cpog; c0 = c1) {
      c1 = g.column_run_end(item.og, c0);
      scalar_t* dst = col_row + g.column_index(c0, item.k) - c0;
      if (vectors) {
        for (int64_t c = c0 + lane * kVector; c < c1; c += kLanes * kVector) {
          acc_t v[kVector];
          RCM_UNROLL
          for (int j = 0; j < kVector; ++j) v[j] = acc_t(0);
          RCM_UNROLL
          for (int i = 0; i < 4; ++i) {
            if (corner[i] != nullptr) add_weighted(v, s.weight[i], load16<scalar_t>(corner[i] + c));
          }
          Vector16<scalar_t> sample;
          RCM_UNROLL
          for (int j = 0; j < kVector; ++j) sample.v[j] = static_cast<scalar_t>(v[j]);
          store16_global(dst + c, sample);
        }
      } else {
        for (int64_t c = c0 + lane; c < c1; c += kLanes) {
          acc_t v = acc_t(0);
          for (int i = 0; i < 4; ++i) {
            if (corner[i] != nullptr) v += s.weight[i] * static_cast<acc_t>(corner[i][c]);
          }
          dst[c] = static_cast<scalar_t>(v);
        }
      }
    }
  }
}

// Whether deform_col2im_kernel moves 16-byte vectors of channels: as im2col_vectors (its columns
// gradient laid out as the columns), and the input gradient and the columns it writes (either may be
// null) aligned too.
template <typename scalar_t, typename acc_t>
RCM_HD bool col2im_vectors(const DeformConvGeometry& g, const scalar_t* input, const scalar_t* grad_columns,
                           const acc_t* grad_input, const scalar_t* columns) {
  return im2col_vectors(g, input, grad_columns) && aligned16(grad_input) && aligned16(columns);
}

// deform_col2im_kernel's blocks of (at most) 256 threads per SM. Its 16-byte path keeps four corner
// vectors and their gradients live: 111-128 registers on sm_90, which 3 blocks (80 registers) would
// spill. Each of its warps has 5 vector loads in flight where the element path had 5 elements.
constexpr int kCol2imBlocksPerSM = 2;

// Backward of the sampling step for rows first_row .. first_row+rows-1, given the gradient of the
// columns. kLanes lanes (8, 16 or 32: lanes_per_sample) per (row, kernel point, offset group)
// (sample_index), a warp's samples consecutive: the lanes walk the group's channels, scatter into
// grad_input (atomics: samples of different rows share pixels) and sum the offset and mask
// gradients, which the sample's lanes then reduce and write without atomics (each sample's lanes
// own them). Where col2im_vectors, a lane takes a vector of channels at a time: one load of the
// columns gradient and of each corner, and vector atomics (atomic_add_elements: in float on sm_90,
// one per four channels); a channel at a time otherwise. The two paths, and the lane counts, give
// each lane other channels, so the offset and mask gradients' sums differ between them in the last
// bits; each is reproducible.
// Grid: sample_warps warps (a grid-stride loop covers the rest).
// grad_input: NHWC, accumulated in acc_t; null skips the scatter (the deterministic backward
// computes it with deform_sample_keys_kernel and deform_col2im_input_gather_kernel instead). grad_mask
// may be null (DCNv1). columns: where not null, the rows' columns as deform_im2col_kernel writes them
// (the same sums in the same order), from the corners read for the offset gradient, so that the weight
// gradient needs no sampling kernel of its own. The CUDA backward always passes them; the test per
// write is what ptxas allocates without spills (the unconditional form spilled 28-52 bytes in the
// 16-bit and 64-bit-index instantiations), as for the scatter below.
template <typename scalar_t, typename acc_t, typename index_t, int kLanes>
__global__ void __launch_bounds__(256, kCol2imBlocksPerSM)
    deform_col2im_kernel(DeformConvGeometry g, const scalar_t* __restrict__ input,
                         const scalar_t* __restrict__ offset, FieldStrides offset_strides,
                         const scalar_t* __restrict__ mask, FieldStrides mask_strides, int64_t first_row,
                         index_t rows, const scalar_t* __restrict__ grad_columns, acc_t* __restrict__ grad_input,
                         scalar_t* __restrict__ grad_offset, FieldStrides grad_offset_strides,
                         scalar_t* __restrict__ grad_mask, FieldStrides grad_mask_strides,
                         scalar_t* __restrict__ columns) {
  static_assert(kLanes == 8 || kLanes == 16 || kLanes == 32, "kLanes: 8, 16 or 32");
  constexpr int kSamplesPerWarp = kWarpSize / kLanes;
  const int lane = threadIdx.x % kLanes;  // of the sample's
  const index_t warps_per_block = blockDim.x / kWarpSize;
  const index_t points = static_cast<index_t>(g.kernel_points());
  const index_t total = rows * points * static_cast<index_t>(g.offset_groups);
  const index_t step = warps_per_block * gridDim.x * kSamplesPerWarp;
  const int64_t cpog = g.channels_per_offset_group();
  constexpr int kVector = Vector16<scalar_t>::kSize;
  const bool vectors = col2im_vectors(g, input, grad_columns, grad_input, columns);
  // The loop runs over the warp's first sample, so that all its lanes take the same trips to the
  // reductions; a sample past the last (in the last warp) takes the last one's indices and does
  // nothing with them.
  for (index_t w0 = (static_cast<index_t>(blockIdx.x) * warps_per_block + threadIdx.x / kWarpSize) * kSamplesPerWarp;
       w0 < total; w0 += step) {
    const index_t w = w0 + static_cast<index_t>(threadIdx.x % kWarpSize / kLanes);
    const bool live = w < total;
    const SampleIndex<index_t> s = sample_index(g, live ? w : total - 1);
    const OutputPixel px = output_pixel(g, first_row + s.r);
    const SamplePoint<acc_t> p = deform_sample_point<acc_t>(g, offset, offset_strides, px.n, s.og, s.k, px.oy, px.ox);
    const acc_t m = modulation<acc_t>(g, mask, mask_strides, px.n, s.og, s.k, px.oy, px.ox);
    const int64_t image_base = px.n * g.height * g.width * g.channels;
    const scalar_t* image = input + image_base;
    // Tested per corner, not around the corner loop: that form took registers enough to cost
    // occupancy in ptxas, this one none.
    const bool scatter = grad_input != nullptr;
    acc_t* grad_image = scatter ? grad_input + image_base : nullptr;
    const scalar_t* grad_row = grad_columns + static_cast<int64_t>(s.r) * g.column_width();
    const bool writes_columns = columns != nullptr;
    scalar_t* col_row = writes_columns ? columns + static_cast<int64_t>(s.r) * g.column_width() : nullptr;
    acc_t sum_dy = 0, sum_dx = 0, sum_value = 0;
    for (int64_t c0 = s.og * cpog, c1; live && c0 < (s.og + 1) * cpog; c0 = c1) {
      c1 = g.column_run_end(s.og, c0);
      const scalar_t* gcol_run = grad_row + g.column_index(c0, s.k) - c0;
      scalar_t* col_run = writes_columns ? col_row + g.column_index(c0, s.k) - c0 : nullptr;
      if (vectors) {
        for (int64_t c = c0 + lane * kVector; c < c1; c += kLanes * kVector) {
          const Vector16<scalar_t> gcol = load16<scalar_t>(gcol_run + c);
          Vector16<scalar_t> corner[4];
          RCM_UNROLL
          for (int i = 0; i < 4; ++i) {
            corner[i] = load16_if<scalar_t>(image + (p.valid[i] ? p.pixel[i] * g.channels + c : 0), p.valid[i]);
          }
          acc_t gm[kVector];
          Vector16<scalar_t> sample;
          RCM_UNROLL
          for (int j = 0; j < kVector; ++j) {
            const acc_t gc = static_cast<acc_t>(gcol.v[j]);
            const acc_t v00 = static_cast<acc_t>(corner[0].v[j]), v01 = static_cast<acc_t>(corner[1].v[j]);
            const acc_t v10 = static_cast<acc_t>(corner[2].v[j]), v11 = static_cast<acc_t>(corner[3].v[j]);
            const CoordinateGradient<acc_t> d = coordinate_gradient(p, v00, v01, v10, v11);
            sum_dy += gc * d.dy;
            sum_dx += gc * d.dx;
            sum_value += gc * interpolate(p, v00, v01, v10, v11);
            gm[j] = gc * m;
            sample.v[j] = static_cast<scalar_t>(masked_sample(p, m, v00, v01, v10, v11));
          }
          if (writes_columns) store16_global(col_run + c, sample);
          RCM_UNROLL
          for (int i = 0; i < 4; ++i) {
            if (scatter && gradient_reaches(p, i)) {
              acc_t add[kVector];
              RCM_UNROLL
              for (int j = 0; j < kVector; ++j) add[j] = p.weight[i] * gm[j];
              atomic_add_elements(grad_image + p.pixel[i] * g.channels + c, add);
            }
          }
        }
        continue;
      }
      for (int64_t c = c0 + lane; c < c1; c += kLanes) {
        const acc_t gcol = static_cast<acc_t>(gcol_run[c]);
        const acc_t v00 = corner_value(p, 0, image, g.channels, c);
        const acc_t v01 = corner_value(p, 1, image, g.channels, c);
        const acc_t v10 = corner_value(p, 2, image, g.channels, c);
        const acc_t v11 = corner_value(p, 3, image, g.channels, c);
        const CoordinateGradient<acc_t> d = coordinate_gradient(p, v00, v01, v10, v11);
        sum_dy += gcol * d.dy;
        sum_dx += gcol * d.dx;
        sum_value += gcol * interpolate(p, v00, v01, v10, v11);
        if (writes_columns) col_run[c] = static_cast<scalar_t>(masked_sample(p, m, v00, v01, v10, v11));
        const acc_t gm = gcol * m;
        for (int i = 0; i < 4; ++i) {
          if (scatter && gradient_reaches(p, i)) {
            atomicAdd(grad_image + p.pixel[i] * g.channels + c, p.weight[i] * gm);
          }
        }
      }
    }
    sum_dy = lane_group_sum<kLanes>(sum_dy);
    sum_dx = lane_group_sum<kLanes>(sum_dx);
    sum_value = lane_group_sum<kLanes>(sum_value);
    if (live && lane == 0) {
      const int64_t ch = 2 * (s.og * points + s.k);
      grad_offset[grad_offset_strides.at(px.n, ch, px.oy, px.ox)] = static_cast<scalar_t>(m * sum_dy);
      grad_offset[grad_offset_strides.at(px.n, ch + 1, px.oy, px.ox)] = static_cast<scalar_t>(m * sum_dx);
      if (grad_mask != nullptr) {
        grad_mask[grad_mask_strides.at(px.n, s.og * points + s.k, px.oy, px.ox)] = static_cast<scalar_t>(sum_value);
      }
    }
  }
}

// table[(r * K + k) * G + og] = the masked corners of that sample that its input gradient reaches, for
// rows first_row .. first_row+rows-1 (r relative to first_row): computed once here, then read by
// deform_sample_keys_kernel and by every channel's thread of deform_col2im_input_gather_kernel. One
// thread per entry.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void deform_sample_table_kernel(DeformConvGeometry g, const scalar_t* __restrict__ offset,
                                           FieldStrides offset_strides, const scalar_t* __restrict__ mask,
                                           FieldStrides mask_strides, int64_t first_row, index_t rows,
                                           MaskedCorners<acc_t>* __restrict__ table) {
  const index_t total = rows * static_cast<index_t>(g.kernel_points()) * static_cast<index_t>(g.offset_groups);
  const index_t step = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t e = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    const SampleIndex<index_t> item = sample_index(g, e);
    table[e] = masked_corners<acc_t>(g, first_row + item.r, item.k, item.og, offset, offset_strides, mask,
                                     mask_strides, /*input_gradient=*/true);
  }
}

// The deterministic input gradient, step 1: the key of each corner of each sample in `table` (entries
// (r * K + k) * G + og, as deform_sample_table_kernel writes them), which input-gradient element group it
// adds to: pixel * G + og (pixel of the whole batch), or `none` (N*H*W*G, after every key) for a corner
// outside the image. One thread per corner: keys[4 * entry + i].
template <typename acc_t, typename index_t>
__global__ void deform_sample_keys_kernel(DeformConvGeometry g, const MaskedCorners<acc_t>* __restrict__ table,
                                          index_t entries, int64_t* __restrict__ keys) {
  const int64_t none = g.batch * g.height * g.width * g.offset_groups;
  const index_t total = entries * 4;
  const index_t step = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t e = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    const int64_t pixel = table[e / 4].pixel[e % 4];
    keys[e] = pixel >= 0 ? pixel * g.offset_groups + (e / 4) % g.offset_groups : none;
  }
}

// The deterministic input gradient, step 2, after the keys are sorted stably (by the caller): for the
// rows first_row .. first_row+rows-1 of `table`, each (input pixel, channel) element of the images those
// rows belong to is summed by one thread, which adds every corner that lands there to grad_input,
// without atomics. `order`: the corners (4 * entry + i) in the stable order of their keys, so a key's
// corners come in the order of their rows, kernel points and corners; `sorted`: the keys in that
// order. starts: where each key's run lies in `order`, for the keys of those images, from key0 = first
// image * H*W*G: run key - key0 is starts[key - key0] .. starts[key - key0 + 1] (images * H*W*G + 1
// values). Each thread starts from the element's gradient and adds its corners one by one in that
// order, so the sums are the same bits whatever the launch configuration, and whatever the chunking of
// the rows (chunks being taken in row order); an element no corner of these rows lands on is left
// alone. Only the pixels from the first key's to the last one's are visited, the grid striding over
// them whatever its size: a piece of a large image reaches a band of it, and the host cannot size the
// grid to that band without waiting for the sort. Consecutive threads take consecutive channels: the
// grad_columns reads and the grad_input update coalesce, and the threads of a warp read the same
// corners (when they share an offset group).
// grad_input: NHWC (N, H, W, C) in acc_t.
template <typename scalar_t, typename acc_t, typename index_t>
__global__ void deform_col2im_input_gather_kernel(DeformConvGeometry g,
                                                  const MaskedCorners<acc_t>* __restrict__ table,
                                                  const int64_t* __restrict__ order,
                                                  const int64_t* __restrict__ sorted,
                                                  const int64_t* __restrict__ starts, int64_t first_row,
                                                  index_t rows, const scalar_t* __restrict__ grad_columns,
                                                  acc_t* __restrict__ grad_input) {
  const int64_t image_pixels = g.height * g.width;
  const int64_t first_image = first_row / g.out_pixels();
  const int64_t images = (first_row + rows - 1) / g.out_pixels() - first_image + 1;
  // The corners on these images are sorted[0 .. reached); the keys after them are `none`.
  const int64_t key0 = first_image * image_pixels * g.offset_groups;
  const int64_t reached = starts[images * image_pixels * g.offset_groups];
  if (reached == 0) return;
  const index_t channels = static_cast<index_t>(g.channels);
  const index_t first_element = static_cast<index_t>((sorted[0] - key0) / g.offset_groups) * channels;
  const index_t end_element = static_cast<index_t>((sorted[reached - 1] - key0) / g.offset_groups + 1) * channels;
  const index_t step = static_cast<index_t>(blockDim.x) * gridDim.x;
  const int64_t cpog = g.channels_per_offset_group();
  // The corners' indices fit index_t (the launcher's choice), so they are decoded in it.
  const index_t groups = static_cast<index_t>(g.offset_groups);
  const index_t points = static_cast<index_t>(g.kernel_points());
  for (index_t idx = first_element + static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < end_element;
       idx += step) {
    const index_t c = idx % channels;
    const int64_t local_pixel = idx / channels;  // of the images from first_image on
    const int64_t run = local_pixel * g.offset_groups + c / cpog;
    const int64_t begin = starts[run], end = starts[run + 1];
    if (begin == end) continue;  // no corner lands here: the element keeps its bits
    acc_t* element = grad_input + (first_image * image_pixels + local_pixel) * g.channels + c;
    acc_t sum = *element;
    for (int64_t j = begin; j < end; ++j) {
      const index_t corner = static_cast<index_t>(order[j]);
      const index_t entry = corner / 4;
      const index_t k = entry / groups % points;
      const index_t r = entry / groups / points;
      const acc_t gcol = static_cast<acc_t>(grad_columns[static_cast<int64_t>(r) * g.column_width() +
                                                         g.column_index(c, k)]);
      sum += table[entry].weight[corner % 4] * gcol;
    }
    *element = sum;
  }
}

}  // namespace kernels
}  // namespace rcm_fsad
