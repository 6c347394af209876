// Float64 reference of the sampling step of modulated deformable convolution, written from the
// definition with plain loops and nothing shared with csrc/ (not even the geometry struct).
//
// Definition. Image n, channel c, is a function of a real position (y, x):
//     sample(y, x) = sum over pixels (i, j) of tent(y - i) * tent(x - j) * image[n, i, j, c],
//     tent(t) = max(0, 1 - |t|),
// i.e. bilinear interpolation with zero outside the image (and zero for a non-finite position).
// Output pixel (oy, ox) of kernel point k = (ki, kj) of offset group g samples at
//     y = oy*stride_h - pad_h + ki*dil_h + dy,   x = ox*stride_w - pad_w + kj*dil_w + dx,
// (dy, dx) = offset[n, 2*(g*K + k) + {0, 1}, oy, ox], and the column value is mask * sample with
// mask = mask[n, g*K + k, oy, ox] (1 without a mask). Channel c belongs to offset group
// c / (C / offset_groups). The columns row (n, oy, ox) is ordered (conv group, kernel point,
// channel within the conv group).
//
// The convolution output, with weight (C_out, C/groups, kh, kw) and bias (C_out):
//   out[row, co] = bias[co] + sum over k = (ki, kj) and channels c of co's conv group of
//                  weight[co, c - group*C/groups, ki, kj] * mask * sample
//
// Gradients, given grad_columns G:
//   grad_input[n, i, j, c] = sum over rows and kernel points of G * mask * tent(y - i) * tent(x - j)
//   grad_mask = sum over the channels of the offset group of G * sample
//   grad_offset (dy) = mask * sum over channels of G * d sample/dy, and likewise dx,
// where d/dy is the RIGHT derivative: tent'(t) = +1 on [-1, 0), -1 on [0, 1), 0 elsewhere. That is
// the convention of the kernels (one-sided from the floor cell at an integer coordinate; at y = -1
// exactly the inside corners give a non-zero gradient, torchvision's convention).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace reference {

struct Shape {
  int64_t N, C, H, W;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t groups, offset_groups;
  bool has_mask;

  int64_t out_h() const { return (H + 2 * ph - (dh * (kh - 1) + 1)) / sh + 1; }
  int64_t out_w() const { return (W + 2 * pw - (dw * (kw - 1) + 1)) / sw + 1; }
  int64_t points() const { return kh * kw; }
  int64_t rows() const { return N * out_h() * out_w(); }
  int64_t row_width() const { return C * points(); }
  // Position of (channel c, kernel point k) in a columns row.
  int64_t column(int64_t c, int64_t k) const {
    const int64_t per_group = C / groups;
    const int64_t group = c / per_group;
    return (group * points() + k) * per_group + c % per_group;
  }
};

// A 4-D (N, C, H, W) field stored with arbitrary element strides.
struct Field {
  std::vector<double> data;
  int64_t sn = 0, sc = 0, sh = 0, sw = 0;
  double& at(int64_t n, int64_t c, int64_t h, int64_t w) { return data[n * sn + c * sc + h * sh + w * sw]; }
  double at(int64_t n, int64_t c, int64_t h, int64_t w) const { return data[n * sn + c * sc + h * sh + w * sw]; }
};

inline double tent(double t) { return std::max(0.0, 1.0 - std::abs(t)); }

inline double tent_right_derivative(double t) {
  if (t >= -1.0 && t < 0.0) return 1.0;
  if (t >= 0.0 && t < 1.0) return -1.0;
  return 0.0;
}

struct Inputs {
  Shape s;
  std::vector<double> image;  // NHWC
  Field offset;               // (N, 2*G*K, out_h, out_w)
  Field mask;                 // (N, G*K, out_h, out_w), when s.has_mask
  std::vector<double> grad_columns;  // (rows, C*K)

  double pixel(int64_t n, int64_t i, int64_t j, int64_t c) const { return image[((n * s.H + i) * s.W + j) * s.C + c]; }
};

struct Outputs {
  std::vector<double> columns;      // (rows, C*K)
  std::vector<double> grad_input;   // NHWC
  std::vector<double> grad_offset;  // (N, 2*G*K, out_h, out_w), contiguous
  std::vector<double> grad_mask;    // (N, G*K, out_h, out_w), contiguous
};

// Sample position of (row, kernel point, offset group).
struct Tap {
  int64_t n, oy, ox;
  double y, x, m;
};

inline Tap tap(const Inputs& in, int64_t row, int64_t k, int64_t g) {
  const Shape& s = in.s;
  Tap t;
  t.n = row / (s.out_h() * s.out_w());
  const int64_t pix = row % (s.out_h() * s.out_w());
  t.oy = pix / s.out_w();
  t.ox = pix % s.out_w();
  const int64_t ki = k / s.kw, kj = k % s.kw;
  t.y = static_cast<double>(t.oy * s.sh - s.ph + ki * s.dh) + in.offset.at(t.n, 2 * (g * s.points() + k), t.oy, t.ox);
  t.x = static_cast<double>(t.ox * s.sw - s.pw + kj * s.dw) + in.offset.at(t.n, 2 * (g * s.points() + k) + 1, t.oy, t.ox);
  t.m = s.has_mask ? in.mask.at(t.n, g * s.points() + k, t.oy, t.ox) : 1.0;
  return t;
}

// sample, d sample/dy (right), d sample/dx (right) of channel c at (y, x).
struct Sample {
  double value = 0, dy = 0, dx = 0;
};

inline Sample sample(const Inputs& in, int64_t n, int64_t c, double y, double x) {
  Sample r;
  if (!std::isfinite(y) || !std::isfinite(x)) return r;
  for (int64_t i = 0; i < in.s.H; ++i) {
    for (int64_t j = 0; j < in.s.W; ++j) {
      const double v = in.pixel(n, i, j, c);
      r.value += tent(y - i) * tent(x - j) * v;
      r.dy += tent_right_derivative(y - i) * tent(x - j) * v;
      r.dx += tent(y - i) * tent_right_derivative(x - j) * v;
    }
  }
  return r;
}

inline Outputs compute(const Inputs& in) {
  const Shape& s = in.s;
  const int64_t K = s.points(), G = s.offset_groups, per_og = s.C / G;
  const int64_t ohw = s.out_h() * s.out_w();
  Outputs out;
  out.columns.assign(s.rows() * s.row_width(), 0.0);
  out.grad_input.assign(s.N * s.H * s.W * s.C, 0.0);
  out.grad_offset.assign(s.N * 2 * G * K * ohw, 0.0);
  out.grad_mask.assign(s.N * G * K * ohw, 0.0);
  for (int64_t row = 0; row < s.rows(); ++row) {
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t g = 0; g < G; ++g) {
        const Tap t = tap(in, row, k, g);
        double gy = 0, gx = 0, gm = 0;
        for (int64_t c = g * per_og; c < (g + 1) * per_og; ++c) {
          const Sample smp = sample(in, t.n, c, t.y, t.x);
          const int64_t col = row * s.row_width() + s.column(c, k);
          out.columns[col] = t.m * smp.value;
          const double grad = in.grad_columns[col];
          gy += grad * smp.dy;
          gx += grad * smp.dx;
          gm += grad * smp.value;
          if (std::isfinite(t.y) && std::isfinite(t.x)) {
            for (int64_t i = 0; i < s.H; ++i) {
              for (int64_t j = 0; j < s.W; ++j) {
                const double w = tent(t.y - i) * tent(t.x - j);
                if (w != 0.0) out.grad_input[((t.n * s.H + i) * s.W + j) * s.C + c] += grad * t.m * w;
              }
            }
          }
        }
        const int64_t pix = t.oy * s.out_w() + t.ox;
        out.grad_offset[(t.n * 2 * G * K + 2 * (g * K + k)) * ohw + pix] = t.m * gy;
        out.grad_offset[(t.n * 2 * G * K + 2 * (g * K + k) + 1) * ohw + pix] = t.m * gx;
        out.grad_mask[(t.n * G * K + g * K + k) * ohw + pix] = gm;
      }
    }
  }
  return out;
}

// The convolution output (rows, C_out) from the columns of compute(); bias may be empty.
inline std::vector<double> forward(const Inputs& in, const Outputs& o, int64_t out_channels,
                                   const std::vector<double>& weight, const std::vector<double>& bias) {
  const Shape& s = in.s;
  const int64_t K = s.points(), cg = s.C / s.groups, cog = out_channels / s.groups;
  std::vector<double> out(s.rows() * out_channels, 0.0);
  for (int64_t row = 0; row < s.rows(); ++row) {
    for (int64_t co = 0; co < out_channels; ++co) {
      const int64_t group = co / cog;
      double sum = bias.empty() ? 0.0 : bias[co];
      for (int64_t k = 0; k < K; ++k) {
        for (int64_t cl = 0; cl < cg; ++cl) {
          const double w = weight[((co * cg + cl) * s.kh + k / s.kw) * s.kw + k % s.kw];
          sum += w * o.columns[row * s.row_width() + s.column(group * cg + cl, k)];
        }
      }
      out[row * out_channels + co] = sum;
    }
  }
  return out;
}

// sum(grad_columns * columns): the scalar whose gradients compute() returns.
inline double loss(const Inputs& in) {
  const Outputs o = compute(in);
  double l = 0;
  for (size_t i = 0; i < o.columns.size(); ++i) l += in.grad_columns[i] * o.columns[i];
  return l;
}

}  // namespace reference
