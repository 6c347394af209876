// Which build of the CPU backend's hot loops this process runs, for rcm_fsad_ops.info().
#pragma once

namespace rcm_fsad {

// "avx2+fma" where the CPU has both (x86), else "default" (the baseline ISA); also "default" when
// RCM_FSAD_CPU_CAPABILITY=default forces the baseline build.
const char* cpu_capability();

}  // namespace rcm_fsad
