// Per-element math of modulated deformable convolution (DCNv2), shared by the CPU backend, the
// CUDA kernels and the emulation harness. Torch-free by design (see common.cuh).
//
// Conventions (identical to torchvision.ops.deform_conv2d):
//   * input is read as NHWC internally: pixel (y, x) of image n starts at ((n*H + y)*W + x)*C.
//   * offset (N, 2*G*K, H_out, W_out): channel 2*(g*K + k) holds dy, 2*(g*K + k) + 1 holds dx for
//     kernel point k = i*kernel_w + j of offset group g; mask (N, G*K, H_out, W_out).
//   * columns (rows = (n, oy, ox), C*K values each) are ordered (conv group, kernel point, channel
//     within the conv group), so one conv group's columns are a contiguous K*C_g block and the
//     weight in (C_out, kh, kw, C_g) order is the matching GEMM operand.
//   * a sample at (y, x) is the bilinear interpolation of its four corner pixels, a corner outside
//     the image reading zero, and a sample outside -1 < y < H, -1 < x < W reading nothing at all.
//     The offset gradient uses the corners of a sample exactly on the -1 border all the same, so
//     that sample gets the gradient of its inside corners (torchvision's convention; mmcv zeroes
//     it, see pytorch/vision#6885). On an integer coordinate the gradient is one-sided, taken from
//     the floor cell. The input gradient reaches only the corners torchvision's does.
//     These rules are torchvision's even for non-finite inputs and output gradients (value_reads,
//     gradient_reaches); a non-finite mask is another matter (masked_weight).
#pragma once

#include <cmath>

#include "common.cuh"

namespace rcm_fsad {
namespace kernels {

// Shapes and hyper-parameters of one deformable convolution.
struct DeformConvGeometry {
  int64_t batch;
  int64_t channels;
  int64_t height;
  int64_t width;
  int64_t out_channels;
  int64_t kernel_h;
  int64_t kernel_w;
  int64_t stride_h;
  int64_t stride_w;
  int64_t pad_h;
  int64_t pad_w;
  int64_t dil_h;
  int64_t dil_w;
  int64_t out_h;
  int64_t out_w;
  int64_t groups;
  int64_t offset_groups;

  RCM_HD int64_t kernel_points() const { return kernel_h * kernel_w; }
  RCM_HD int64_t channels_per_group() const { return channels / groups; }
  RCM_HD int64_t channels_per_offset_group() const { return channels / offset_groups; }
  RCM_HD int64_t out_pixels() const { return out_h * out_w; }
  RCM_HD int64_t column_width() const { return channels * kernel_points(); }

  // Position of channel c of kernel point k inside a row of the columns matrix.
  RCM_HD int64_t column_index(int64_t c, int64_t k) const {
    const int64_t cg = channels_per_group();
    const int64_t group = c / cg;
    return group * kernel_points() * cg + k * cg + (c - group * cg);
  }

  // End of the run of channels from c that stays in offset group og and in the conv group of c:
  // the channels of [c, end) have consecutive columns, column_index(c, k) - c + channel, so a
  // kernel walks a run without a division per channel.
  RCM_HD int64_t column_run_end(int64_t og, int64_t c) const {
    const int64_t cg = channels_per_group();
    return min_of((og + 1) * channels_per_offset_group(), (c / cg + 1) * cg);
  }

  // Whether every run of channels (an NHWC pixel's, a conv group's, an offset group's) is whole
  // vectors of n channels, so that kernels may move them n at a time.
  RCM_HD bool channel_runs_are_multiples_of(int64_t n) const {
    return channels % n == 0 && channels_per_group() % n == 0 && channels_per_offset_group() % n == 0;
  }
};

// Element strides of a 4-D (N, C, H, W) tensor, whatever its memory format.
struct FieldStrides {
  int64_t n;
  int64_t c;
  int64_t h;
  int64_t w;

  RCM_HD int64_t at(int64_t n_, int64_t c_, int64_t h_, int64_t w_) const {
    return n_ * n + c_ * c + h_ * h + w_ * w;
  }
};

// Row r of the columns matrix is output pixel (oy, ox) of image n.
struct OutputPixel {
  int64_t n;
  int64_t oy;
  int64_t ox;
};

RCM_HD OutputPixel output_pixel(const DeformConvGeometry& g, int64_t row) {
  const int64_t n = row / g.out_pixels();
  const int64_t pix = row - n * g.out_pixels();
  const int64_t oy = pix / g.out_w;
  return {n, oy, pix - oy * g.out_w};
}

// Kernel point k's place in the kernel window, in input pixels from the window's first tap.
struct KernelPoint {
  int64_t dy;
  int64_t dx;
};

RCM_HD KernelPoint kernel_point(const DeformConvGeometry& g, int64_t k) {
  const int64_t i = k / g.kernel_w;
  return {i * g.dil_h, (k - i * g.kernel_w) * g.dil_w};
}

// Where a kernel point of output pixel (oy, ox) samples before its offset is added.
struct TapOrigin {
  int64_t y;
  int64_t x;
};

RCM_HD TapOrigin tap_origin(const DeformConvGeometry& g, int64_t oy, int64_t ox, const KernelPoint& point) {
  return {oy * g.stride_h - g.pad_h + point.dy, ox * g.stride_w - g.pad_w + point.dx};
}

template <typename T>
RCM_HD T floor_of(T v) {
#if defined(__CUDA_ARCH__)
  return floor(v);
#else
  return std::floor(v);
#endif
}

// The four bilinear corners of one sample: (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1).
// pixel[i] is the corner's index y*W + x within its image (0 for a corner outside the image, so
// it is always safe to form an address from it); valid[i] says the corner is inside the image.
// weight[i] is the bilinear weight, zero for an invalid corner: the sample is sum(weight[i] * v[i]).
template <typename acc_t, typename index_t = int64_t>
struct SamplePoint {
  index_t pixel[4];
  bool valid[4];
  acc_t weight[4];
  acc_t ly;  // y - y0
  acc_t lx;  // x - x0
  // y == -1 or x == -1: the value reads no corner (torchvision's sample is 0 there, even where its
  // inside corners, all of weight 0, hold an infinity), while the offset gradient takes them.
  bool on_border;
};

// A sample's position as its corners are found from it: (y, x) where a corner may lie inside the image
// (-1 <= y < H, -1 <= x < W), else (0, 0) and not reachable, every corner outside. The test also rejects
// NaN and infinite positions before they reach floor() and an integer cast.
template <typename acc_t>
struct SamplePosition {
  acc_t y;
  acc_t x;
  bool reachable;
  bool on_border;  // SamplePoint::on_border
};

// Here and in sample_point_at, value_reads and gradient_reaches, & and | where && and || would do: a
// comparison that && or || may skip is a branch, which keeps GCC from vectorising the CPU's loops over samples.
template <typename acc_t>
RCM_HD SamplePosition<acc_t> sample_position(acc_t y, acc_t x, int64_t height, int64_t width) {
  const bool reachable = (y >= acc_t(-1)) & (y < acc_t(height)) & (x >= acc_t(-1)) & (x < acc_t(width));
  const bool on_border = reachable & ((y == acc_t(-1)) | (x == acc_t(-1)));
  return {reachable ? y : acc_t(0), reachable ? x : acc_t(0), reachable, on_border};
}

// The sample at position q (sample_position). index_t, the corners' coordinates and pixel indices, must
// hold height * width. Apart from sample_position so that a loop over samples may compute the two in
// loops of their own: in one loop, GCC turns sample_position's test into a branch around floor() and
// the integer cast, and vectorises nothing.
template <typename acc_t, typename index_t = int64_t>
RCM_HD SamplePoint<acc_t, index_t> sample_point_at(SamplePosition<acc_t> q, index_t height, index_t width) {
  SamplePoint<acc_t, index_t> p;
  const acc_t yf = floor_of(q.y);
  const acc_t xf = floor_of(q.x);
  const index_t y0 = static_cast<index_t>(yf);
  const index_t x0 = static_cast<index_t>(xf);
  p.ly = q.y - yf;
  p.lx = q.x - xf;
  p.on_border = q.on_border;
  const acc_t hy = acc_t(1) - p.ly;
  const acc_t hx = acc_t(1) - p.lx;
  const bool in_y0 = q.reachable & (y0 >= 0);
  const bool in_y1 = q.reachable & (y0 + 1 < height);
  const bool in_x0 = x0 >= 0;
  const bool in_x1 = x0 + 1 < width;
  const bool inside[4] = {in_y0 && in_x0, in_y0 && in_x1, in_y1 && in_x0, in_y1 && in_x1};
  const index_t pixel[4] = {y0 * width + x0, y0 * width + x0 + 1, (y0 + 1) * width + x0,
                            (y0 + 1) * width + x0 + 1};
  const acc_t bilinear[4] = {hy * hx, hy * p.lx, p.ly * hx, p.ly * p.lx};
  for (int i = 0; i < 4; ++i) {
    p.pixel[i] = inside[i] ? pixel[i] : 0;
    p.valid[i] = inside[i];
    p.weight[i] = inside[i] ? bilinear[i] : acc_t(0);
  }
  return p;
}

// The sample at (y, x), for a kernel that takes one at a time.
template <typename acc_t>
RCM_HD SamplePoint<acc_t> make_sample_point(acc_t y, acc_t x, int64_t height, int64_t width) {
  return sample_point_at<acc_t>(sample_position(y, x, height, width), height, width);
}

// The offset (dy, dx) of kernel point k of offset group og at output pixel (oy, ox) of image n.
template <typename acc_t>
struct SampleOffset {
  acc_t dy;
  acc_t dx;
};

template <typename acc_t, typename scalar_t>
RCM_HD SampleOffset<acc_t> sample_offset(const DeformConvGeometry& g, const scalar_t* offset,
                                         const FieldStrides& offset_strides, int64_t n, int64_t og, int64_t k,
                                         int64_t oy, int64_t ox) {
  const int64_t ch = 2 * (og * g.kernel_points() + k);
  return {static_cast<acc_t>(offset[offset_strides.at(n, ch, oy, ox)]),
          static_cast<acc_t>(offset[offset_strides.at(n, ch + 1, oy, ox)])};
}

// Sample point of a kernel point at output pixel (oy, ox) displaced by d.
template <typename acc_t>
RCM_HD SamplePoint<acc_t> displaced_sample_point(const DeformConvGeometry& g, const KernelPoint& point, int64_t oy,
                                                 int64_t ox, const SampleOffset<acc_t>& d) {
  const TapOrigin o = tap_origin(g, oy, ox, point);
  return make_sample_point<acc_t>(static_cast<acc_t>(o.y) + d.dy, static_cast<acc_t>(o.x) + d.dx, g.height,
                                  g.width);
}

// Sample point of kernel point k of offset group og at output pixel (oy, ox) of image n, with
// the modulation m (1 when there is no mask).
template <typename acc_t, typename scalar_t>
RCM_HD SamplePoint<acc_t> deform_sample_point(const DeformConvGeometry& g, const scalar_t* offset,
                                              const FieldStrides& offset_strides, int64_t n,
                                              int64_t og, int64_t k, int64_t oy, int64_t ox) {
  return displaced_sample_point<acc_t>(g, kernel_point(g, k), oy, ox,
                                       sample_offset<acc_t>(g, offset, offset_strides, n, og, k, oy, ox));
}

template <typename acc_t, typename scalar_t>
RCM_HD acc_t modulation(const DeformConvGeometry& g, const scalar_t* mask,
                        const FieldStrides& mask_strides, int64_t n, int64_t og, int64_t k,
                        int64_t oy, int64_t ox) {
  if (mask == nullptr) return acc_t(1);
  return static_cast<acc_t>(mask[mask_strides.at(n, og * g.kernel_points() + k, oy, ox)]);
}

// A sample reduced to what a kernel that scatters or gathers channels needs: its four corners as
// NHWC pixel indices in the whole batch (-1 outside the image) and their bilinear weights times
// the mask (0 outside the image, so that a kernel may blend zero-filled corners with them
// unconditionally, even where an infinite mask makes the other weights non-finite).
template <typename acc_t>
struct MaskedCorners {
  int64_t pixel[4];
  acc_t weight[4];
};

// What the masked corners of a sample are computed from, as loaded: its offset and its modulation
// (1 without a mask). A kernel may load a sample's field well before it needs the corners.
template <typename acc_t>
struct SampleField {
  SampleOffset<acc_t> offset;
  acc_t m;
};

template <typename acc_t, typename scalar_t>
RCM_HD SampleField<acc_t> sample_field(const DeformConvGeometry& g, const OutputPixel& px, int64_t k, int64_t og,
                                       const scalar_t* offset, const FieldStrides& offset_strides,
                                       const scalar_t* mask, const FieldStrides& mask_strides) {
  return {sample_offset<acc_t>(g, offset, offset_strides, px.n, og, k, px.oy, px.ox),
          modulation<acc_t>(g, mask, mask_strides, px.n, og, k, px.oy, px.ox)};
}

// Whether corner i counts in the sample's value (the forward, the mask gradient): inside the image,
// of a sample not on the -1 border. Inside corners of zero weight count, as in torchvision, where a
// sample on an integer coordinate next to an infinity is NaN (0 x inf).
template <typename acc_t, typename index_t>
RCM_HD bool value_reads(const SamplePoint<acc_t, index_t>& p, int i) {
  return p.valid[i] & !p.on_border;
}

// Whether corner i receives the sample's input gradient: inside the image, and within a pixel of the
// sample in both directions as torchvision's backward asks (|y - yp| < 1, |x - xp| < 1): always true
// of the floor row and column, and of the next ones where 1 - ly and 1 - lx, rounded as torchvision
// rounds them, stay below 1 (not for a sample on an integer coordinate, nor within a rounding of one).
// Adding 0 x the share of a corner it skips would spread a non-finite output gradient or mask
// (0 x inf = NaN) to the neighbours of that sample.
template <typename acc_t, typename index_t>
RCM_HD bool gradient_reaches(const SamplePoint<acc_t, index_t>& p, int i) {
  const bool row = (i < 2) | (acc_t(1) - p.ly < acc_t(1));
  const bool column = (i % 2 == 0) | (acc_t(1) - p.lx < acc_t(1));
  return p.valid[i] & row & column;
}

// Corner i's bilinear weight times the modulation m where value_reads and the weight is not zero,
// else zero whatever m is: an infinite m must not meet the zero weight of a corner on an integer
// coordinate or the zero that a corner outside reads (0 x inf = NaN). torchvision multiplies the
// interpolated sample by m instead, so with an infinite m the two still differ where the sample
// reads no corner (0 here, inf x 0 = NaN there) or a corner of non-zero weight holds 0.
template <typename acc_t, typename index_t>
RCM_HD acc_t masked_weight(const SamplePoint<acc_t, index_t>& p, int i, acc_t m) {
  return value_reads(p, i) && p.weight[i] != acc_t(0) ? p.weight[i] * m : acc_t(0);
}

// The masked corners of kernel point k of output pixel px, whose field is f: those the sample's value
// reads (value_reads), or with input_gradient those its input gradient reaches (gradient_reaches);
// the others as outside the image.
template <typename acc_t>
RCM_HD MaskedCorners<acc_t> masked_corners_of(const DeformConvGeometry& g, const OutputPixel& px, int64_t k,
                                              const SampleField<acc_t>& f, bool input_gradient = false) {
  const SamplePoint<acc_t> p = displaced_sample_point<acc_t>(g, kernel_point(g, k), px.oy, px.ox, f.offset);
  const int64_t image_pixel0 = px.n * g.height * g.width;
  MaskedCorners<acc_t> corners;
  for (int i = 0; i < 4; ++i) {
    const bool taken = input_gradient ? gradient_reaches(p, i) : value_reads(p, i);
    corners.pixel[i] = taken ? image_pixel0 + p.pixel[i] : -1;
    // The value's weights as masked_weight has them; the input gradient's corners' own (never 0).
    corners.weight[i] = !input_gradient ? masked_weight(p, i, f.m) : taken ? p.weight[i] * f.m : acc_t(0);
  }
  return corners;
}

// The corners of a row past the last one: none.
template <typename acc_t>
RCM_HD MaskedCorners<acc_t> no_corners() {
  MaskedCorners<acc_t> corners;
  for (int i = 0; i < 4; ++i) {
    corners.pixel[i] = -1;
    corners.weight[i] = acc_t(0);
  }
  return corners;
}

// The masked corners of kernel point k, offset group og of row `row` (an output pixel of the whole
// batch), as masked_corners_of; a row past the last one has no corners.
template <typename acc_t, typename scalar_t>
RCM_HD MaskedCorners<acc_t> masked_corners(const DeformConvGeometry& g, int64_t row, int64_t k, int64_t og,
                                           const scalar_t* offset, const FieldStrides& offset_strides,
                                           const scalar_t* mask, const FieldStrides& mask_strides,
                                           bool input_gradient = false) {
  if (row >= g.batch * g.out_pixels()) return no_corners<acc_t>();
  const OutputPixel px = output_pixel(g, row);
  return masked_corners_of<acc_t>(
      g, px, k, sample_field<acc_t>(g, px, k, og, offset, offset_strides, mask, mask_strides), input_gradient);
}

// The bilinear blend of a sample's corner values (zero for a corner outside the image): its value
// unless it is on the -1 border. Branch-free, for loops that vectorise.
template <typename acc_t, typename index_t>
RCM_HD acc_t bilinear_blend(const SamplePoint<acc_t, index_t>& p, acc_t v00, acc_t v01, acc_t v10, acc_t v11) {
  return p.weight[0] * v00 + p.weight[1] * v01 + p.weight[2] * v10 + p.weight[3] * v11;
}

// The sample's value from its corner values (zero for a corner outside the image); zero on the -1
// border (value_reads).
template <typename acc_t>
RCM_HD acc_t interpolate(const SamplePoint<acc_t>& p, acc_t v00, acc_t v01, acc_t v10, acc_t v11) {
  if (p.on_border) return acc_t(0);
  return bilinear_blend(p, v00, v01, v10, v11);
}

// A sample's value times its modulation from its corner values and their masked_weight w: a column's
// entry, summed in corner order as deform_im2col_kernel and the CPU's sampling sum it.
template <typename acc_t>
RCM_HD acc_t masked_blend(const acc_t (&w)[4], acc_t v00, acc_t v01, acc_t v10, acc_t v11) {
  return w[0] * v00 + w[1] * v01 + w[2] * v10 + w[3] * v11;
}

// masked_blend of a sample's corner values (zero for a corner outside the image, which adds 0 x 0):
// the column deform_im2col_kernel writes from masked_corners_of, zero on the -1 border, where the value
// reads no corner. For a kernel that holds the corner values already (deform_col2im_kernel).
template <typename acc_t>
RCM_HD acc_t masked_sample(const SamplePoint<acc_t>& p, acc_t m, acc_t v00, acc_t v01, acc_t v10, acc_t v11) {
  if (p.on_border) return acc_t(0);
  const acc_t w[4] = {masked_weight(p, 0, m), masked_weight(p, 1, m), masked_weight(p, 2, m),
                      masked_weight(p, 3, m)};
  return masked_blend(w, v00, v01, v10, v11);
}

// Value of channel c at corner i of an NHWC image; zero for a corner outside the image.
template <typename acc_t, typename scalar_t>
RCM_HD acc_t corner_value(const SamplePoint<acc_t>& p, int i, const scalar_t* image,
                          int64_t channels, int64_t c) {
  return p.valid[i] ? static_cast<acc_t>(image[p.pixel[i] * channels + c]) : acc_t(0);
}

// d(sample)/dy and d(sample)/dx from the corner values, which must be zero for invalid corners.
template <typename acc_t>
struct CoordinateGradient {
  acc_t dy;
  acc_t dx;
};

template <typename acc_t, typename index_t>
RCM_HD CoordinateGradient<acc_t> coordinate_gradient(const SamplePoint<acc_t, index_t>& p, acc_t v00,
                                                     acc_t v01, acc_t v10, acc_t v11) {
  return {(acc_t(1) - p.lx) * (v10 - v00) + p.lx * (v11 - v01),
          (acc_t(1) - p.ly) * (v01 - v00) + p.ly * (v11 - v10)};
}

}  // namespace kernels
}  // namespace rcm_fsad
