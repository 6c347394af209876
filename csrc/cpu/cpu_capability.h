// Which build of the CPU backend's hot loops this process runs, whether its bfloat16 forwards multiply in
// bfloat16, and what runs its float32 GEMMs, for rcm_fsad_ops.info().
#pragma once

namespace rcm_fsad {

// "avx2+fma" where the CPU has both (x86), else "default" (the baseline ISA); also "default" when
// RCM_FSAD_CPU_CAPABILITY=default forces the baseline build.
const char* cpu_capability();

// Whether a bfloat16 forward's GEMMs run in bfloat16 now: the CPU multiplies bfloat16 natively
// (AVX512-BF16) and oneDNN is on (torch.backends.mkldnn.enabled). Small layers, and those that take the
// group loops, compute in float32 all the same.
bool cpu_bfloat16_gemms();

// Whether float32 layers' products with the weight run in oneDNN now (onednn_gemms.h): torch has oneDNN and
// it is on; else in ATen's GEMM (BLAS). The group loops compute their own all the same.
bool cpu_float32_gemms_in_onednn();

}  // namespace rcm_fsad
