#!/usr/bin/env bash
# `make test-kernels`: configures and builds the CPU-emulated kernel tests in the AddressSanitizer
# + UBSan build (build/kernels-asan) and the ThreadSanitizer build (build/kernels-tsan) while the
# ptxas resource gate (tools/ptxas_report.py --check) runs, then runs the tests of each build. Needs
# g++ >= 12, cmake and python3 (no venv, no torch, no GPU). The last line is the summary, "N passed,
# M failed", counting the test cases of both builds plus the gate; the exit status is non-zero when
# anything failed.
#   MAX_JOBS       parallel compile jobs of each build (default 2)
#   CTEST_JOBS     parallel test processes (default 1: every test runs hundreds of threads, and two
#                  at once on 2 cores take twice as long as one after the other)
#   CXX            the compiler (default g++)
set -u -o pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
jobs=${MAX_JOBS:-2}
ctest_jobs=${CTEST_JOBS:-1}
cxx=${CXX:-g++}
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi

passed=0
failed=0
start_all=$SECONDS

# ThreadSanitizer needs a memory layout it knows; on some kernels (large mmap_rnd_bits) it dies with
# "FATAL: ThreadSanitizer: unexpected memory mapping" unless ASLR is off. Probe, and fall back to
# running the TSan tests under `setarch <arch> -R`.
tsan_runner() {
  local probe=$1 out
  if out=$("$probe" builtins 2>&1); then return 0; fi
  if grep -q "unexpected memory mapping" <<<"$out" && setarch "$(uname -m)" -R true 2>/dev/null; then
    if setarch "$(uname -m)" -R "$probe" builtins >/dev/null 2>&1; then
      echo "setarch $(uname -m) -R"
      return 0
    fi
  fi
  echo "tsan-unusable"
  echo "$out" | head -5 >&2
}

label_of() {
  case $1 in
    address) echo "AddressSanitizer + UBSan" ;;
    thread) echo "ThreadSanitizer" ;;
  esac
}
dir_of() {
  case $1 in
    address) echo build/kernels-asan ;;
    thread) echo build/kernels-tsan ;;
  esac
}

# Configures and builds one sanitizer's tree; its output goes to $dir/build.log.
build_tree() {
  local sanitizer=$1 dir
  dir=$(dir_of "$sanitizer")
  mkdir -p "$dir"
  cmake -S tests/kernels -B "$dir" "${generator[@]}" -DCMAKE_CXX_COMPILER="$cxx" \
    -DKERNEL_TESTS_SANITIZER="$sanitizer" >"$dir/build.log" 2>&1 &&
    cmake --build "$dir" -j "$jobs" >>"$dir/build.log" 2>&1
}

# Both builds and the ptxas gate at once: each build spends most of its time compiling one file
# (test_deform_kernels.cpp), so that one after the other would leave a core idle.
echo "==== kernel tests: building both sanitizer trees, and the ptxas resource gate (sm_90a)"
mkdir -p build
ptxas_log=build/ptxas_check.log
python3 tools/ptxas_report.py --check >"$ptxas_log" 2>&1 &
ptxas_pid=$!
declare -A build_pid
for sanitizer in address thread; do
  build_tree "$sanitizer" &
  build_pid[$sanitizer]=$!
done
declare -A built
for sanitizer in address thread; do
  if wait "${build_pid[$sanitizer]}"; then built[$sanitizer]=1; else built[$sanitizer]=0; fi
done
if wait "$ptxas_pid"; then ptxas_status=0; else ptxas_status=1; fi
echo "     built in $((SECONDS - start_all))s"

for sanitizer in address thread; do
  label=$(label_of "$sanitizer")
  dir=$(dir_of "$sanitizer")
  echo "==== kernel tests: $label build ($dir)"
  start=$SECONDS
  if [[ ${built[$sanitizer]} -eq 0 ]]; then
    cat "$dir/build.log"
    echo "==== $label build: configure or compile FAILED"
    failed=$((failed + 1))
    continue
  fi
  runner=""
  if [[ $sanitizer == thread ]]; then
    runner=$(tsan_runner "$dir/test_harness")
    if [[ $runner == tsan-unusable ]]; then
      echo "==== $label build: ThreadSanitizer cannot run on this machine (see above): FAILED"
      failed=$((failed + 1))
      continue
    fi
    [[ -n $runner ]] && echo "     (ASLR off for ThreadSanitizer: running under '$runner')"
  fi
  log="$dir/ctest.log"
  # shellcheck disable=SC2086
  (cd "$dir" && $runner ctest --output-on-failure -j "$ctest_jobs") 2>&1 | tee "$log"
  summary=$(grep -Eo '[0-9]+ tests? failed out of [0-9]+' "$log" | tail -1)
  if [[ -z $summary ]]; then
    echo "==== $label build: ctest did not report a summary: FAILED"
    failed=$((failed + 1))
    continue
  fi
  bad=$(awk '{print $1}' <<<"$summary")
  total=$(awk '{print $NF}' <<<"$summary")
  passed=$((passed + total - bad))
  failed=$((failed + bad))
  echo "==== $label build: $((total - bad)) passed, $bad failed ($((SECONDS - start))s)"
done

echo "==== ptxas resource gate (sm_90a)"
cat "$ptxas_log"
if [[ $ptxas_status -ne 0 ]]; then
  failed=$((failed + 1))
elif grep -q "ptxas check skipped" "$ptxas_log"; then
  echo "     (not counted)"
else
  passed=$((passed + 1))
fi

echo "==== kernel tests took $((SECONDS - start_all))s"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
