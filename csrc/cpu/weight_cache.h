// The CPU forward's weight operands, kept across calls for weights that do not change (inference).
//
// A forward turns the weight into its GEMMs' operand on every call: the matrix (C_out, kh*kw*C_in/groups)
// and oneDNN's packing of it. At batch 1 that is a third of the work (256 channels, 14x14, one thread: 0.17
// and 0.24 of 1.45 ms), and both are fresh allocations of the weight's size that glibc may map and fault
// in anew on every call (1120 page faults at 256 channels, which took a forward from 0.5 to 2.3 ms at 2x2
// pixels). The cache keeps them for a weight seen twice at the same version (its in-place writes bump the
// version: an optimiser's step, load_state_dict), and hands them out only while the weight's bytes are those
// they were built from: a copy of the weight is compared on every hit, so a write that bumps no version
// (through .data, numpy or DLPack) is seen too, and a hit is bit for bit what a fresh preparation gives.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>

#include "onednn_gemms.h"

namespace rcm_fsad::cpu {

// The weight as the forward's products take it; each member is empty where the forward takes another.
struct ForwardWeight {
  at::Tensor matrix;     // (C_out, kh*kw*C_in/groups): ATen's GEMM
  at::Tensor loops;      // the matrix transposed, its columns output-major: the group loops
  PackedGroups packed;   // the matrix packed for oneDNN
  int64_t bytes() const;
};

// The product that takes the weight: ATen's GEMM (float64; bfloat16 GEMMs), the group loops, or oneDNN's.
enum class WeightProduct { aten_gemm, group_loops, onednn };

// What else, besides the weight's shape, strides and dtype, decides the preparation.
struct ForwardWeightConfig {
  int64_t groups;
  int64_t rows_hint;  // oneDNN's: the tiles' rows, which its choice of layout may take into account (else 0)
  WeightProduct product;
  at::ScalarType operands;  // the operands' dtype: float32 for a float16 or bfloat16 weight computed in it
};

// build(): a fresh ForwardWeight of weight for config, or the cached one built from the same bytes. Only dense
// weights (contiguous, channels_last) are kept, within RCM_FSAD_CPU_WEIGHT_CACHE_BYTES (weight copies and
// operands together, least recently used out first; 256 MiB unless set, 0 turns the cache off).
std::shared_ptr<const ForwardWeight> cached_forward_weight(const at::Tensor& weight, const ForwardWeightConfig& config,
                                                           const std::function<ForwardWeight()>& build);

// The cache's counters since the process started (or the last clear), for rcm_fsad_ops.info() and tests.
struct ForwardWeightCacheStats {
  int64_t entries;
  int64_t bytes;     // the entries' weight copies and operands
  int64_t hits;      // forwards that took a kept entry
  int64_t builds;    // forwards that built their operands (misses, and uncacheable weights)
  int64_t capacity;  // RCM_FSAD_CPU_WEIGHT_CACHE_BYTES now
};
ForwardWeightCacheStats forward_weight_cache_stats();

// Drops every entry and sighting, and zeroes the counters.
void clear_forward_weight_cache();

}  // namespace rcm_fsad::cpu
