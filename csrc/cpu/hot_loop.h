// The CPU backend's hot loops (the sampling, its backward, group_loops.h) are compiled for the baseline
// ISA and, on x86, again for AVX2+FMA (what they gain most from: 8-wide vectors and registers enough for
// the lane sums); the CPU picks at run time, as ATen's own kernels do. RCM_FSAD_CPU_CAPABILITY=default
// forces the baseline build (like ATEN_CPU_CAPABILITY), so that the tests cover both. An op asks once,
// on the calling thread (make_sampling), not once per tile on the workers: one read of the environment
// per op, and one build for all of an op's tiles.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#define RCM_FSAD_AVX2_DISPATCH 1
#endif

namespace rcm_fsad::cpu {

inline bool use_avx2_fma() {
#ifdef RCM_FSAD_AVX2_DISPATCH
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* forced = std::getenv("RCM_FSAD_CPU_CAPABILITY");
  return has && !(forced != nullptr && std::strcmp(forced, "default") == 0);
#else
  return false;
#endif
}

// Whether the CPU multiplies bfloat16 natively (AVX512-BF16, which CPUs with AMX have too), so that
// oneDNN's bfloat16 GEMMs run at about twice the float32 rate; elsewhere they are emulated, far slower.
inline bool cpu_multiplies_bfloat16() {
#ifdef RCM_FSAD_AVX2_DISPATCH
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

// run_hot_loop(avx2_fma, loop) runs loop() in the build that avx2_fma picks. loop: a lambda marked
// RCM_FSAD_HOT_LOOP, so that each build inlines, and compiles, a copy of its body.
#define RCM_FSAD_HOT_LOOP __attribute__((always_inline))

template <typename Loop>
void baseline_build(const Loop& loop) {
  loop();
}

#ifdef RCM_FSAD_AVX2_DISPATCH
template <typename Loop>
[[gnu::target("avx2,fma")]] void avx2_build(const Loop& loop) {
  loop();
}
#endif

template <typename Loop>
void run_hot_loop(bool avx2_fma, const Loop& loop) {
#ifdef RCM_FSAD_AVX2_DISPATCH
  if (avx2_fma) return avx2_build(loop);
#endif
  baseline_build(loop);
}

}  // namespace rcm_fsad::cpu
