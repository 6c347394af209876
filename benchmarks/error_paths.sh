#!/usr/bin/env bash
# Bad input must raise, never crash: benchmarks/error_paths.py runs each rejected-argument case of
# deform_conv2d in child processes, on the CPU and (where one is visible) on CUDA, with the extension
# built in place, and says which raised and which died. Run from anywhere, after the build:
#
#     bash benchmarks/error_paths.sh
#
# Why: on the GPU machine of session 12 (torch 2.11, a compiler at /opt/gcc that the torch environment
# names in CC/CXX) the checks in the body of check_deform_conv2d_args killed the process with SIGSEGV
# instead of raising; the same sources raise here and under Ubuntu 24.04's own g++ 13.3 with the same
# torch. So where a case dies, this script also gathers what tells a toolchain fault from ours:
#   - the compiler torch's build used (CXX, else c++) and its configuration, whether its crtbeginS.o
#     registers unwind tables at load time (__register_frame_info: libgcc then searches them itself,
#     pytorch/pytorch#117645), the extension's PT_GNU_EH_FRAME header, its libraries, and the libgcc_s
#     and libstdc++ the process maps;
#   - where the crash is: a SIGSEGV handler preloaded into a crashing case prints the faulting
#     instruction's library and symbol (the machine has no gdb);
#   - the cases again with the CPU part of the extension rebuilt (RCM_FSAD_CPU_ONLY=1, in a copy of the
#     tree) by the system's g++, and by the same compiler with -fno-reorder-blocks-and-partition (no
#     .cold parts of functions).
# Exit status: 0 when every case raised, 1 otherwise (also when the extension does not import: then
# nothing else runs). A crash costs about a minute more on 16 cores (two CPU-only rebuilds).
#
# Environment: PYTHON (default: python, else python3).

set -uo pipefail
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"; elif command -v python >/dev/null 2>&1; then PY=python; else PY=python3; fi
# Absolute (the rebuilds run in other folders), resolved from the caller's folder, a venv's link kept.
PY_FOUND="$(command -v "$PY")" || { echo "error_paths.sh: no python at '$PY'"; exit 1; }
PY="$(realpath -s "$PY_FOUND")"
REPO="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
cd "$REPO" || exit 1
CASES="$REPO/benchmarks/error_paths.py"
if ! "$PY" -c 'import rcm_fsad_ops._C' 2>&1 | tail -n 1; then
    echo "error_paths.sh: the extension does not import (build it first): nothing to check"
    exit 1
fi
WORK="$(mktemp -d /tmp/rcm_fsad_error_paths.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

"$PY" "$CASES" | tee "$WORK/in-place.txt"
STATUS=${PIPESTATUS[0]}
(( STATUS != 2 )) && exit $(( STATUS != 0 ))
CRASHED="$(tail -n 1 "$WORK/in-place.txt" | sed 's/^first crash: //')"

echo
echo "== a case crashed: the toolchain and the extension"
CXX_USED="${CXX:-c++}"
echo "CC=${CC:-unset} CXX=${CXX:-unset} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-unset}"
echo "$CXX_USED: $(command -v "$CXX_USED")"; "$CXX_USED" -v 2>&1 | tail -n 2
CRTBEGIN="$("$CXX_USED" -print-file-name=crtbeginS.o)"
echo "$CRTBEGIN registers unwind tables at load: $(nm "$CRTBEGIN" 2>/dev/null | grep -c register_frame_info) reference(s)"
SO="$(ls "$REPO"/rcm_fsad_ops/_C*.so | head -n 1)"
readelf -lW "$SO" | grep -i "eh_frame" || echo "no PT_GNU_EH_FRAME in $SO"
readelf -dW "$SO" | grep -E "NEEDED|RPATH|RUNPATH"
(cd "$REPO" && PYTHONPATH="$REPO" "$PY" -c '
import rcm_fsad_ops  # noqa: F401 (loads torch and the extension)
maps = open("/proc/self/maps").read().split("\n")
print("mapped:", sorted({l.split()[-1] for l in maps if "libgcc_s" in l or "libstdc++" in l}))')

echo
echo "== where the first crash ($CRASHED) is"
cat > "$WORK/segv_where.c" <<'CEOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <ucontext.h>
#include <unistd.h>

/* Prints the faulting instruction's library and nearest symbol, then dies as the signal would. Uses no
   unwinder: the crash may be in it. */
static void where(int sig, siginfo_t* info, void* context) {
  ucontext_t* uc = (ucontext_t*)context;
  void* pc = (void*)uc->uc_mcontext.gregs[REG_RIP];
  Dl_info dl;
  if (dladdr(pc, &dl) && dl.dli_fname) {
    fprintf(stderr, "SIGSEGV at %p (address %p): %s + %#lx, %s + %#lx\n", pc, info->si_addr, dl.dli_fname,
            (unsigned long)((char*)pc - (char*)dl.dli_fbase), dl.dli_sname ? dl.dli_sname : "?",
            dl.dli_saddr ? (unsigned long)((char*)pc - (char*)dl.dli_saddr) : 0UL);
  } else {
    fprintf(stderr, "SIGSEGV at %p (address %p), in no loaded object\n", pc, info->si_addr);
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

__attribute__((constructor)) static void install(void) {
  struct sigaction action = {0};
  action.sa_sigaction = where;
  action.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &action, NULL);
}
CEOF
if cc -shared -fPIC -O1 -o "$WORK/segv_where.so" "$WORK/segv_where.c" -ldl; then
    # shellcheck disable=SC2086  # CRASHED is "DEVICE CASE"
    (cd "$REPO" && LD_PRELOAD="$WORK/segv_where.so" PYTHONPATH="$REPO" timeout 60 "$PY" "$CASES" --child $CRASHED 2>&1 | tail -n 3)
else
    echo "could not compile the SIGSEGV handler"
fi

# rebuild_cpu LABEL ENV...: the CPU-only extension, built in a copy of the tree with ENV, and the cases on
# the CPU with it.
rebuild_cpu() {
    local label="$1" tree="$WORK/$1"
    shift
    mkdir -p "$tree"
    # What setup.py reads, without the built extension.
    tar -C "$REPO" --exclude='rcm_fsad_ops/_C*' -cf - setup.py tools csrc rcm_fsad_ops | tar -C "$tree" -xf -
    echo
    echo "== CPU-only rebuild: $label ($*)"
    if ! (cd "$tree" && env "$@" RCM_FSAD_CPU_ONLY=1 MAX_JOBS=16 timeout 120 "$PY" setup.py build_ext --inplace \
            > "$tree/build.log" 2>&1); then
        tail -n 5 "$tree/build.log"
        return
    fi
    "$PY" "$CASES" --devices cpu --tree "$tree" --label "$label"
}
if [[ -x /usr/bin/g++ && "$(readlink -f "$(command -v "$CXX_USED")")" != "$(readlink -f /usr/bin/g++)" ]]; then
    rebuild_cpu system-g++ CC=/usr/bin/gcc CXX=/usr/bin/g++
fi
rebuild_cpu no-cold-parts CFLAGS=-fno-reorder-blocks-and-partition
exit 1
