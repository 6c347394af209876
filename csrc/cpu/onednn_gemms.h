// The CPU backend's float32 GEMMs in oneDNN: a tile's columns times the weight, the output gradient times
// its transpose, and the weight gradient's sums. They go through the ops torch.compile's CPU backend uses for
// a frozen linear layer: mkldnn::_reorder_linear_weight packs the weight into oneDNN's blocked layout once per
// call of the op, and mkldnn::_linear_pointwise multiplies each tile's rows by it (and, unpacked, the weight
// gradient's operands). ATen's float32 GEMM is BLAS's (MKL in the pip wheels), whose kernels on an AVX512 AMD
// EPYC are its AVX2 ones: there a tile's product (196 x 2304 x 256, one thread) ran at 100 GFLOP/s in MKL,
// 195 as a oneDNN 1x1 convolution (which packs the weight on every call) and 240 packed once. oneDNN's
// float32 sums are less accurate: 1.6x the RMS error of BLAS's against float64 at 128 to 512 channels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <vector>

namespace rcm_fsad::cpu {

// The two oneDNN ops, looked up once; empty where this torch lacks them or their CPU kernels take other C++
// types (typed() checks and throws), so that the GEMMs stay with BLAS there.
struct OnednnLinearOps {
  using Pack = at::Tensor(const at::Tensor&, std::optional<int64_t>);
  using Multiply = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                              c10::string_view, c10::List<std::optional<c10::Scalar>>,
                              std::optional<c10::string_view>);
  std::optional<c10::TypedOperatorHandle<Pack>> pack;
  std::optional<c10::TypedOperatorHandle<Multiply>> multiply;

  static const OnednnLinearOps& get() {
    static const OnednnLinearOps ops = [] {
      OnednnLinearOps found;
      auto& dispatcher = c10::Dispatcher::singleton();
      const auto pack = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
      const auto multiply = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
      if (pack.has_value() && multiply.has_value() && pack->hasKernelForDispatchKey(c10::DispatchKey::CPU) &&
          multiply->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
        try {
          found.pack = pack->typed<Pack>();
          found.multiply = multiply->typed<Multiply>();
        } catch (const c10::Error&) {
          found = OnednnLinearOps();
        }
      }
      return found;
    }();
    return ops;
  }
};

// Whether oneDNN may run: torch was built with it, and it is on (torch.backends.mkldnn.enabled).
inline bool onednn_on() { return at::hasMKLDNN() && at::globalContext().userEnabledMkldnn(); }

// Whether float32 GEMMs take oneDNN: onednn_on, and this torch has the ops above. float64 stays with BLAS, and
// bfloat16 with ATen's GEMM, which hands it to oneDNN itself.
inline bool onednn_float_gemms_available() { return onednn_on() && OnednnLinearOps::get().multiply.has_value(); }
inline bool onednn_float_gemms(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && onednn_float_gemms_available();
}

// A matrix (groups * out, in), group after group, packed for multiply_rows: rows of `in` values times each
// group's block transposed. rows_hint: the tiles' rows, which oneDNN's choice of layout may take into account.
class PackedGroups {
 public:
  PackedGroups() = default;
  PackedGroups(const at::Tensor& matrix, int64_t groups, int64_t rows_hint)
      : out_(matrix.size(0) / groups), in_(matrix.size(1)) {
    for (int64_t gi = 0; gi < groups; ++gi) {
      blocks_.push_back(OnednnLinearOps::get().pack->call(matrix.narrow(0, gi * out_, out_).contiguous(), rows_hint));
    }
  }

  // out[:, gi*out : (gi+1)*out] = rows[:, gi*in : (gi+1)*in] @ block(gi)^T (+ bias's block), for each group.
  // rows (R, groups * in) with unit stride along a row; out (R, groups * out), any strides.
  void multiply_rows(const at::Tensor& rows, const std::optional<at::Tensor>& bias, at::Tensor& out) const {
    for (int64_t gi = 0; gi < int64_t(blocks_.size()); ++gi) {
      out.narrow(1, gi * out_, out_).copy_(multiply_group(rows, bias, gi));
    }
  }

  // What multiply_rows writes, as a new contiguous (R, groups * out) tensor. With one group it is oneDNN's own
  // result, not a copy of it: for callers that only read the product (the copies were 2% of a 64-channel
  // forward+backward's profile, one thread).
  at::Tensor product(const at::Tensor& rows, const std::optional<at::Tensor>& bias) const {
    if (blocks_.size() == 1) {
      at::Tensor only = multiply_group(rows, bias, 0);
      TORCH_INTERNAL_ASSERT(only.is_contiguous(), "oneDNN's linear product is not contiguous");
      return only;
    }
    at::Tensor out = at::empty({rows.size(0), int64_t(blocks_.size()) * out_}, rows.options());
    multiply_rows(rows, bias, out);
    return out;
  }

  // The packed blocks' size (oneDNN's layout may pad them a little).
  int64_t bytes() const {
    int64_t total = 0;
    for (const at::Tensor& block : blocks_) total += block.numel() * int64_t(block.element_size());
    return total;
  }

 private:
  // rows[:, gi*in : (gi+1)*in] @ block(gi)^T (+ bias's block): (R, out), oneDNN's result.
  at::Tensor multiply_group(const at::Tensor& rows, const std::optional<at::Tensor>& bias, int64_t gi) const {
    const std::optional<at::Tensor> bias_block =
        bias.has_value() ? std::optional(bias->narrow(0, gi * out_, out_)) : std::nullopt;
    return OnednnLinearOps::get().multiply->call(rows.narrow(1, gi * in_, in_), blocks_[gi], bias_block, "none",
                                                  c10::List<std::optional<c10::Scalar>>(), std::nullopt);
  }

  std::vector<at::Tensor> blocks_;
  int64_t out_ = 0;
  int64_t in_ = 0;
};

// The weight matrix (C_out, K*C_g) packed to multiply a tile's columns (GroupMajor: conv group after conv
// group) by it.
inline PackedGroups columns_weight(const at::Tensor& wmat, int64_t groups, int64_t rows_hint) {
  return PackedGroups(wmat, groups, rows_hint);
}

// The weight matrix's transpose, group by group, packed to multiply output-gradient rows by it.
inline PackedGroups columns_gradient_weight(const at::Tensor& wmat, int64_t groups, int64_t rows_hint) {
  const int64_t out_cols = wmat.size(0) / groups;
  return PackedGroups(
      wmat.view({groups, out_cols, wmat.size(1)}).transpose(1, 2).reshape({groups * wmat.size(1), out_cols}), groups,
      rows_hint);
}

// acc (M, N) += a^T b, for a (R, M) and b (R, N) with unit strides along their rows: oneDNN's sums over the
// R rows, added to acc. As a product of weight gradients it ran at 164-207 GFLOP/s where MKL's sgemm adding
// in place ran at 97-101 (256 rows, 64-256 channels, one thread).
inline void add_transposed_product(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
  acc.add_(OnednnLinearOps::get().multiply->call(a.t(), b.t(), std::nullopt, "none",
                                                  c10::List<std::optional<c10::Scalar>>(), std::nullopt));
}

}  // namespace rcm_fsad::cpu
