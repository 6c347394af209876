// Which build of the CPU backend's hot loops this process runs, and whether its bfloat16 forwards multiply
// in bfloat16, for rcm_fsad_ops.info().
#pragma once

namespace rcm_fsad {

// "avx2+fma" where the CPU has both (x86), else "default" (the baseline ISA); also "default" when
// RCM_FSAD_CPU_CAPABILITY=default forces the baseline build.
const char* cpu_capability();

// Whether a bfloat16 forward's GEMMs run in bfloat16 now: the CPU multiplies bfloat16 natively
// (AVX512-BF16) and oneDNN is on (torch.backends.mkldnn.enabled). Small layers, and those that take the
// group loops, compute in float32 all the same.
bool cpu_bfloat16_gemms();

}  // namespace rcm_fsad
