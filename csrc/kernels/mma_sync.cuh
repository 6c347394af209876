// One warp's tensor-core multiply-accumulate on fragments held in registers (PTX mma.sync), for
// kernels that build an operand in registers instead of loading it from shared memory, as WMMA's
// fragments must be: d += a x b on a 16 x 8 tile of float sums, the reduction 16 deep for 16-bit
// operands (m16n8k16) and 8 deep for TF32 (m16n8k8).
//
// Fragments, for lane = 4 q + t (q = lane / 4, t = lane % 4), in 32-bit words (PTX ISA, "Matrix
// Fragments for mma.m16n8k16" and "for mma.m16n8k8"): a row of A and a column of B are 8 words
// deep (two 16-bit elements per word, the lower k in the low half; one TF32 element per word).
//   a[0] = word t of A's row q,      a[1] = word t of row q + 8,
//   a[2] = word t + 4 of row q,      a[3] = word t + 4 of row q + 8;
//   b[0] = word t of B's column q,   b[1] = word t + 4 of column q;
//   d[0], d[1] = D[q][2t], D[q][2t + 1],   d[2], d[3] = D[q + 8][2t], D[q + 8][2t + 1].
// The order of the reduction is the caller's to choose, as long as A and B agree on it.
// Under nvcc the instruction (sm_80+); under the CPU emulation harness (tests/kernels/
// cuda_emulation.h) its model of it, emu::mma_m16n8_sync. The CPU backend does not include this
// header.
#pragma once

#include <cstdint>
#include <type_traits>

#include "deform_conv2d_implicit_gemm_wmma.cuh"  // MmaInput, Tf32, RCM_WMMA_AVAILABLE

namespace rcm_fsad {
namespace kernels {

#if defined(RCM_WMMA_AVAILABLE)
#if !defined(__CUDACC__)
// The emulator's name for the tensor-core input type mma_t (__half, __nv_bfloat16 or Tf32).
template <typename mma_t>
constexpr ::emu::MmaOperand emulated_operand() {
  return std::is_same_v<mma_t, __half>          ? ::emu::MmaOperand::F16
         : std::is_same_v<mma_t, __nv_bfloat16> ? ::emu::MmaOperand::BF16
                                                : ::emu::MmaOperand::TF32;
}
#endif

// d += a x b for the whole warp (every lane calls it, with its own fragments), mma_t: __half,
// __nv_bfloat16 or Tf32 (operands already rounded to TF32: the tensor cores ignore the low bits).
template <typename mma_t>
__device__ __forceinline__ void mma_m16n8(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDACC__)
  if constexpr (std::is_same_v<mma_t, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else if constexpr (std::is_same_v<mma_t, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    static_assert(std::is_same_v<mma_t, Tf32>, "mma_t: __half, __nv_bfloat16 or Tf32");
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  ::emu::mma_m16n8_sync(emulated_operand<mma_t>(), d, a, b);
#endif
}
#endif  // RCM_WMMA_AVAILABLE

}  // namespace kernels
}  // namespace rcm_fsad
