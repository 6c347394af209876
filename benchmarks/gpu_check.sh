#!/usr/bin/env bash
# The one prepared check for a GPU machine (SPEC section 3): H200, system-wide torch (2.11) + torchvision,
# nvcc 13.0, no network. Run from anywhere:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Steps, in order (each one's output is tee'd into a log under $OUT; a failing step does not stop the
# ones after it):
#   1 env        nvidia-smi, nvcc, python/torch/torchvision/pytest/ninja versions   -> build.log
#   2 build      MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0a python setup.py build_ext --inplace (Hopper
#                with its arch-specific features: the wgmma kernel's code)         -> build.log
#   3 info       python -m rcm_fsad_ops info                                        -> build.log
#     wgmma      the wgmma kernel's first runs: implicit_gemm_wgmma against the default path in bf16,
#                fp16, TF32 and fp32 (split TF32) on the benchmark's shapes, before any other GPU step;
#                where it fails (a fault, a hang, a disagreement, or not running at all), the later
#                steps run with RCM_FSAD_DISABLE_WGMMA=1, so that a broken new kernel does not take
#                their results with it (also where the step was skipped)          -> checks.log
#     errors     bad arguments raise, each in a process of its own, CPU and CUDA; where one crashes, what
#                tells a toolchain fault from ours (benchmarks/error_paths.sh)       -> checks.log
#   4 smoke      every sanitizer case below, without a sanitizer: a kernel that hangs shows here
#                within 120 s, and then every later GPU step is skipped (each would hang to its cap) so
#                that the time is left for a fix and a rerun (as they are when the build fails) -> checks.log
#   5 tests      python -m benchmarks.resuming_pytest tests -k cuda --maxfail=15 (CUDA parity tests;
#                a test that kills the process or loses the CUDA context costs itself only: a fresh
#                pytest resumes after it; a per-test timeout where pytest-timeout is installed; fails
#                when no GPU is visible)                                             -> checks.log
#   6 memcheck   compute-sanitizer --tool memcheck on small forward+backward cases, six CUDA
#                forward algorithms (the default with TF32 and without: split TF32) and the
#                deterministic backward, four dtypes (every CUDA kernel)
#                                                                                   -> checks.log
#   7 bench      python -m benchmarks --device cuda --out $OUT                      -> bench.log, cuda-*.json/.md
#   8 bench-tf32 the fp32 benchmark with TF32 allowed on both sides                 -> bench.log, cuda-tf32-*.md
#     goals      (optional) the goals judged from both runs (python -m benchmarks.goals) -> bench.log, summary.txt
#   9 racecheck  the first five sanitizer cases in float32/float16                  -> checks.log
#  10 synccheck  the same                                                           -> checks.log
#   extra, only while the time budget lasts (optional: their failure is reported, not a FAIL):
#  11 ncu        Nsight Compute on one launch of each tensor-core forward kernel (cp.async WMMA,
#                mma.sync and wgmma) at N32 C256 56x56 bf16: throughput, issue slots, warp stalls and
#                where                                                                -> bench.log
#  12 profile    per-kernel device time of each implementation (python -m benchmarks.profile_kernels
#                --device cuda --repeats 5; tables only)                            -> bench.log
#  13 overhead   the host's cost of a call on a layer too small for its kernels to count, ours beside
#                torchvision and conv2d (python -m benchmarks.call_overhead)         -> bench.log
#  14 grouped    the benchmark's depthwise and 16-offset-group cases (named, so outside the goals; no
#                reference, no file)
#                                                                                   -> bench.log
#  15 compile    benchmark incl. torch.compile(reference) on the smallest case      -> bench.log
#
# $OUT/summary.txt lists every step (OK / FAIL / SKIP / TIME, exit code, seconds), a STATUS line, then
# the goals and the files in $OUT; TIME: cut short by the budget before its own cap (unfinished, not
# failed). The script exits 0 when all ran and passed, 1 when any required step failed, 2 when a
# required step was skipped or cut short. Files in $OUT are kept to at most 7 (the device tool brings back 8 at most; the caller may tee its
# console into an eighth).
#
# Environment: OUT (default /tmp/gpu_check_out), PYTHON (default: python, else python3),
# BUDGET_S (total time budget in seconds, default 480; each step's timeout is capped by what is left
# after the time kept for the memcheck and benchmark steps still to come (RESERVED_S below); 540 fits
# one call of the device tool's 600 s),
# RCM_FSAD_GIT_REVISION (the commit the tree was copied from, for the reports: a device copy's .git can be
# stale; e.g. RCM_FSAD_GIT_REVISION=$(git rev-parse --short HEAD), filled in where the copy is made).

set -uo pipefail

REPO="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
cd "$REPO" || exit 1

OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"
BUILD_LOG="$OUT/build.log"
CHECKS_LOG="$OUT/checks.log"
BENCH_LOG="$OUT/bench.log"
BUDGET_S="${BUDGET_S:-480}"
export PYTHONUNBUFFERED=1
# Settings of the caller's shell that would change what is measured: the forward path of "ours" and the
# wgmma kernel's switch, cuBLAS's workspace, PyTorch's caching allocator (the steps that need one of them
# set it themselves).
unset RCM_FSAD_DEFORM_CONV_ALGO RCM_FSAD_DISABLE_WGMMA CUBLAS_WORKSPACE_CONFIG PYTORCH_NO_CUDA_MEMORY_CACHING
# The extension is built in place, not installed: scripts run from elsewhere (/tmp) must find it.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif command -v python >/dev/null 2>&1; then
    PY=python
else
    PY=python3
fi

NCU=""
for candidate in "$(command -v ncu 2>/dev/null)" /usr/local/cuda/bin/ncu /usr/local/cuda-*/bin/ncu \
                 /opt/nvidia/nsight-compute/*/ncu; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then
        NCU="$candidate"
        break
    fi
done

SANITIZER=""
for candidate in "$(command -v compute-sanitizer 2>/dev/null)" /usr/local/cuda/bin/compute-sanitizer \
                 /usr/local/cuda-*/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then
        SANITIZER="$candidate"
        break
    fi
done

START=$SECONDS
FAILED=()
OPTIONAL_FAILED=()
SKIPPED_REQUIRED=()
NO_GPU_STEPS=""  # why the GPU steps are skipped: the build failed, or a kernel hung in the smoke step
LAST_RC=0  # of the last step (0 for one skipped)
LAST_STATUS=OK  # of the last step: OK, FAIL, TIME (cut short by the budget) or SKIP
{
    echo "gpu_check.sh  $(date -Is)  revision ${RCM_FSAD_GIT_REVISION:-not given}"
    echo "repo $REPO  python $PY  budget ${BUDGET_S}s  sanitizer ${SANITIZER:-not found}  ncu ${NCU:-not found}"
    printf '%-10s %-6s %5s %7s  %s\n' step status rc seconds log
} > "$SUMMARY"

# step, gpu_step, skip_step and the reservations they honour.
source "$REPO/benchmarks/gpu_check_steps.sh"
# Kept back for the required steps whose results a run is for: memcheck (12 s in session 12, with fewer
# paths and no wgmma), the benchmark that judges the goals (33 s then, now with more rows) and its TF32 run
# (18 s), at two to three times those, so that the CUDA tests before them (capped at 240 s, and growing with
# every test added) cannot take their time. A shorter budget cuts the earlier steps first.
RESERVED_S=([memcheck]=30 [bench]=90 [bench-tf32]=45)

# ---- 1 env ------------------------------------------------------------------------------------------
step env "$BUILD_LOG" 60 1 "
nvidia-smi || echo 'nvidia-smi failed'
echo; echo \"nvcc: \$(command -v nvcc || echo 'not on PATH')\"; nvcc --version 2>/dev/null | tail -n 2
echo \"ninja: \$(command -v ninja || echo 'not found (torch falls back to a slow serial build)')\"
echo \"python: \$(command -v $PY)\"
$PY - <<'PYEOF'
import platform, importlib
import torch
print('python', platform.python_version(), platform.platform())
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())
print('cuda available', torch.cuda.is_available(), 'devices', torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('gpu', p.name, 'sm_%d%d' % (p.major, p.minor), round(p.total_memory / 2**30, 1), 'GiB', p.multi_processor_count, 'SMs')
print('threads', torch.get_num_threads())
for name in ('torchvision', 'pytest', 'numpy', 'ninja'):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, '__version__', '?'))
    except Exception as e:
        print(name, 'NOT AVAILABLE:', type(e).__name__, e)
PYEOF
"

# ---- 2 build ----------------------------------------------------------------------------------------
step build "$BUILD_LOG" 330 1 "MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0a $PY setup.py build_ext --inplace"
[[ $LAST_STATUS == OK ]] || NO_GPU_STEPS="the build failed or did not run"

# ---- 3 info -----------------------------------------------------------------------------------------
step info "$BUILD_LOG" 60 1 "
$PY -m rcm_fsad_ops info || { echo '(python -m rcm_fsad_ops info failed; asking the package directly)';
$PY -c 'import json, rcm_fsad_ops; print(json.dumps(rcm_fsad_ops.info(), indent=2))'; }
"

# ---- wgmma: the new kernel alone first ---------------------------------------------------------------
WGMMA_PY=/tmp/rcm_fsad_wgmma_first_runs.py
cat > "$WGMMA_PY" <<'PYEOF'
"""RCM_FSAD_DEFORM_CONV_ALGO=implicit_gemm_wgmma against the default path (the mma.sync kernel) on the
benchmark's CUDA shapes, in bf16, fp16, fp32 with TF32 and fp32 without (split TF32): the largest
difference relative to the largest output, which a wrong operand layout makes of order 1 and the two
kernels' different sums leave near the dtype's rounding; each with the wgmma kernel's launch seen in the
profiler. Exit 0: all within tolerance; 1: not, or the kernel not launched; 2: it does not run here
(rcm_fsad_ops.info()["wgmma"])."""
import os
import sys

import torch

import rcm_fsad_ops
from benchmarks.environment import tf32_set_to
from benchmarks.shapes import CASES


def forward_and_kernels(t, case):
    """The forward's output and the names of the CUDA kernels it launched."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof, torch.no_grad():
        out = rcm_fsad_ops.deform_conv2d(t["input"], t["offset"], t["weight"], t.get("bias"), mask=t.get("mask"),
                                         **case.kwargs())
        torch.cuda.synchronize()
    return out.double(), [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


if not rcm_fsad_ops.info()["wgmma"]:
    print("the wgmma kernel does not run here:", rcm_fsad_ops.info())
    sys.exit(2)
# (dtype, TF32 allowed, tolerance of the difference relative to the largest output): several roundings
# of the output (16 bits) or of sums of 2304 products in a different order (fp32), not a layout's error;
# what this misses, the parity tests judge against float64.
SETTINGS = {"bf16": (torch.bfloat16, False, 2e-2), "fp16": (torch.float16, False, 4e-3),
            "tf32": (torch.float32, True, 4e-3), "fp32": (torch.float32, False, 1e-4)}
bad = 0
for (name, (dtype, tf32, tolerance)), case in ((s, c) for s in SETTINGS.items() for c in CASES):
    t = case.make_inputs("cuda", dtype)
    outs, kernels = {}, {}
    for algo in ("implicit_gemm", "implicit_gemm_wgmma"):
        os.environ["RCM_FSAD_DEFORM_CONV_ALGO"] = algo
        with tf32_set_to(tf32):
            outs[algo], kernels[algo] = forward_and_kernels(t, case)
    # the wgmma kernel ran (on split operands for fp32 without TF32), or the comparison says nothing
    ran = any("implicit_gemm_wgmma_kernel" in k and (name != "fp32" or "Tf32Split" in k)
              for k in kernels["implicit_gemm_wgmma"])
    diff = (outs["implicit_gemm_wgmma"] - outs["implicit_gemm"]).abs().max().item()
    relative = diff / max(outs["implicit_gemm"].abs().max().item(), 1e-30)
    ok = ran and relative <= tolerance
    bad += not ok
    print(f"{name:5} {case.name:15} max |wgmma - default| / max |default| = {relative:.3g} "
          f"(tolerance {tolerance:g}) {'ok' if ok else 'DIFFERENT' if ran else 'NOT RUN: ' + str(kernels)}",
          flush=True)
sys.exit(1 if bad else 0)
PYEOF
gpu_step wgmma "$CHECKS_LOG" 90 1 "$PY $WGMMA_PY"
if [[ -z $NO_GPU_STEPS && $LAST_STATUS != OK ]]; then
    export RCM_FSAD_DISABLE_WGMMA=1
    echo "===== the wgmma kernel failed its first runs: the later steps run with RCM_FSAD_DISABLE_WGMMA=1" |
        tee -a "$CHECKS_LOG"
    printf '%-10s %-6s %5s %7s  %s\n' wgmma-off - - 0 "RCM_FSAD_DISABLE_WGMMA=1 for the later steps" >> "$SUMMARY"
fi

# ---- errors: bad input raises (session 12 found it killing the process on this machine) -------------------
gpu_step errors "$CHECKS_LOG" 240 1 "PYTHON='$PY' bash benchmarks/error_paths.sh"

# ---- 4 smoke: the sanitizer's cases without it ---------------------------------------------------------
SMALL_PY=/tmp/rcm_fsad_sanitizer_small.py
cat > "$SMALL_PY" <<'PYEOF'
"""Small deform_conv2d forward+backward cases on CUDA, for compute-sanitizer: every CUDA kernel
(tensor-core (cp.async WMMA, WMMA with synchronous loads, mma.sync, wgmma on sm_90) and CUDA-core
implicit-GEMM forward, columns forward, im2col, col2im, and the deterministic backward's input-gradient
kernel). The tensor-core runs allow TF32, so that float32 takes those kernels too, but for one run of
the default path and one of wgmma without it: float32 on split TF32. 160 output channels: the mma.sync
kernel's 128 x 256 blocks, whose warps trade sampled rows through shared memory. 6 channels (no whole
16-byte vectors) with 70 output channels: the 128-wide WMMA kernel with synchronous loads, float32
included; 40 channels in offset groups of 10: channel runs off 16-byte boundaries, which must not be
loaded as vectors (a misaligned-address fault). The small cases split the implicit-GEMM forward over
kernel points (its tiles do not fill the GPU), the last case (36864 output pixels) does not.
RCM_SANITIZER_QUICK=1: float32 and float16 only, and the first five cases (racecheck and synccheck
look at shared memory and barriers, which the others add nothing to)."""
import os

import torch

import rcm_fsad_ops

torch.manual_seed(0)
device = "cuda"
# (N, C_in, C_out, H, W, kernel, stride, padding, dilation, groups, offset_groups, mask, channels_last)
CASES = [
    (2, 8, 12, 9, 7, 3, 1, 1, 1, 1, 1, True, False),
    (2, 16, 8, 11, 13, 3, 2, 2, 2, 2, 2, True, False),
    (1, 12, 6, 8, 8, 3, 1, 1, 1, 1, 1, False, False),
    (2, 32, 32, 7, 9, 3, 1, 1, 1, 1, 1, True, True),
    (1, 32, 160, 12, 12, 3, 1, 1, 1, 1, 1, True, True),
    (1, 6, 70, 6, 6, 3, 1, 1, 1, 1, 1, True, False),
    (1, 40, 70, 5, 5, 3, 1, 1, 1, 1, 4, True, False),
    (4, 8, 8, 96, 96, 3, 1, 1, 1, 1, 1, True, False),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
if os.environ.get("RCM_SANITIZER_QUICK") == "1":
    DTYPES = DTYPES[:2]
    CASES = CASES[:5]
# (forward algorithm, deterministic backward, TF32 allowed)
MODES = [("implicit_gemm", False, True), ("implicit_gemm", False, False), ("implicit_gemm_wgmma", False, True),
         ("implicit_gemm_wgmma", False, False), ("implicit_gemm_wmma", False, True), ("implicit_gemm_sync", False, True), ("implicit_gemm_simt", False, False),
         ("columns", False, False), ("implicit_gemm", True, True)]
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # for PyTorch versions that ask for it
RUNS = [(case, mode) for case in CASES for mode in MODES]
for (n, c_in, c_out, h, w, k, s, p, d, groups, offset_groups, use_mask, channels_last), (algo, det, tf32) in RUNS:
    os.environ["RCM_FSAD_DEFORM_CONV_ALGO"] = algo  # read by the CUDA forward at each call
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.use_deterministic_algorithms(det)
    h_out = (h + 2 * p - d * (k - 1) - 1) // s + 1
    w_out = (w + 2 * p - d * (k - 1) - 1) // s + 1
    base = {
        "input": torch.randn(n, c_in, h, w),
        # scaled so that many samples fall outside the image and on its border
        "offset": torch.randn(n, 2 * offset_groups * k * k, h_out, w_out) * 2.0,
        "weight": torch.randn(c_out, c_in // groups, k, k) * 0.2,
        "bias": torch.randn(c_out),
        "mask": torch.rand(n, offset_groups * k * k, h_out, w_out),
    }
    for dtype in DTYPES:
        t = {key: v.to(device, dtype).requires_grad_() for key, v in base.items()}
        x = t["input"]
        if channels_last:
            x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        out = rcm_fsad_ops.deform_conv2d(x, t["offset"], t["weight"], t["bias"], stride=s, padding=p,
                                         dilation=d, mask=t["mask"] if use_mask else None)
        out.backward(torch.randn_like(out))
        torch.cuda.synchronize()
        print("ok", algo, "deterministic" if det else "", "tf32" if tf32 else "",
              (n, c_in, c_out, h, w, s, p, d, groups, offset_groups, use_mask, channels_last), dtype,
              tuple(out.shape), flush=True)
print("sanitizer small cases: done")
PYEOF

CUDA_VISIBLE='import sys, torch; sys.exit(0 if torch.cuda.is_available() else "torch sees no GPU")'
gpu_step smoke "$CHECKS_LOG" 120 1 "$PY -c '$CUDA_VISIBLE' && $PY $SMALL_PY"
[[ -z $NO_GPU_STEPS && $LAST_STATUS == FAIL ]] && (( LAST_RC == 124 || LAST_RC == 137 )) &&
    NO_GPU_STEPS="a kernel hung in the smoke step"

# ---- 5 CUDA parity tests ----------------------------------------------------------------------------
# Not -x: one failure would hide every CUDA test after it; nor would one that kills the process or the CUDA
# context (session 12 lost the tests after the first bad-input check), with benchmarks.resuming_pytest
# (whose rounds count --maxfail each).
# A per-test timeout (thread method: a kernel that never returns blocks signals) where pytest-timeout is
# installed. 240 s: six CUDA backends since session 14 (cuda-wgmma), none of them timed on the GPU
# machine yet; since session 26 also 432 tests on random problems (tests/test_random_problems.py, small
# ones), collected last, so that if the cap cuts the step it cuts them.
if $PY -c 'import pytest' >/dev/null 2>&1; then
    TEST_TIMEOUT=""
    $PY -c 'import pytest_timeout' >/dev/null 2>&1 && TEST_TIMEOUT="--timeout=60 --timeout_method=thread"
    gpu_step tests "$CHECKS_LOG" 240 1 "$PY -c '$CUDA_VISIBLE' && $PY -m benchmarks.resuming_pytest tests -q -rfEs -k cuda --maxfail=15 --tb=short --durations=10 $TEST_TIMEOUT -p no:cacheprovider"
else
    skip_step tests "$CHECKS_LOG" 1 "pytest is not installed for $PY"
fi

# ---- 6 compute-sanitizer memcheck on the small cases ----------------------------------------------------
if [[ -n "$SANITIZER" ]]; then
    # No caching allocator: out-of-bounds accesses inside a pooled block would go unseen otherwise.
    gpu_step memcheck "$CHECKS_LOG" 180 1 "PYTORCH_NO_CUDA_MEMORY_CACHING=1 '$SANITIZER' --tool memcheck --leak-check no --error-exitcode 86 --print-limit 40 $PY $SMALL_PY"
else
    skip_step memcheck "$CHECKS_LOG" 1 "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"
fi

# ---- 7, 8 benchmarks ------------------------------------------------------------------------------------
gpu_step bench "$BENCH_LOG" 270 1 "$PY -m benchmarks --device cuda --out '$OUT'"
# fp32 with TF32 allowed on both sides (our tensor-core kernels against torchvision's TF32 GEMM).
rm -rf /tmp/gpu_check_tf32
gpu_step bench-tf32 "$BENCH_LOG" 90 1 "$PY -m benchmarks --device cuda --tf32 --dtypes fp32 --out /tmp/gpu_check_tf32"
for f in /tmp/gpu_check_tf32/cuda-*.md; do
    [[ -e $f ]] && cp "$f" "$OUT/$(basename "$f" | sed 's/^cuda-/cuda-tf32-/')"
done
# The goals, from whatever the two runs wrote (a run cut short keeps the cases it finished).
GOALS_MD=/tmp/gpu_check_goals.md
rm -f "$GOALS_MD"
step goals "$BENCH_LOG" 30 0 "set -o pipefail; $PY -m benchmarks.goals \$(ls $OUT/cuda-*.json /tmp/gpu_check_tf32/cuda-*.json 2>/dev/null) | tee $GOALS_MD"

# ---- 9, 10 race and barrier checks on fewer cases and dtypes --------------------------------------------
for tool in racecheck synccheck; do
    if [[ -n "$SANITIZER" ]]; then
        gpu_step "$tool" "$CHECKS_LOG" 100 1 "RCM_SANITIZER_QUICK=1 PYTORCH_NO_CUDA_MEMORY_CACHING=1 '$SANITIZER' --tool $tool --error-exitcode 86 --print-limit 40 $PY $SMALL_PY"
    else
        skip_step "$tool" "$CHECKS_LOG" 1 "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"
    fi
done

# ---- 11, 12 extra while time is left ---------------------------------------------------------------------
# Where the tensor-core forward kernels lose time, from the hardware counters: one launch of each at the
# bf16 goal's shape, the clocks left as they are (--clock-control none). SourceCounters names the
# instructions where warps stall most (the build has -lineinfo); its tables are in the sections' bodies,
# hence --print-details all. ncu exits 0 when no kernel matched, so that counts as a failure here.
NCU_PY=/tmp/rcm_fsad_ncu_forward.py
cat > "$NCU_PY" <<'PYEOF'
"""One bf16 forward of N32 C256 56x56 through each tensor-core forward kernel, for Nsight Compute."""
import os

import torch

import rcm_fsad_ops
from benchmarks.shapes import CASES_BY_NAME

case = CASES_BY_NAME["n32_c256_56x56"]
t = case.make_inputs("cuda", torch.bfloat16)
with torch.no_grad():
    for algo in ("implicit_gemm", "implicit_gemm_wgmma", "implicit_gemm_wmma"):
        os.environ["RCM_FSAD_DEFORM_CONV_ALGO"] = algo
        rcm_fsad_ops.deform_conv2d(t["input"], t["offset"], t["weight"], t.get("bias"), mask=t.get("mask"),
                                   **case.kwargs())
        torch.cuda.synchronize()
        print("ncu forward:", algo, flush=True)
PYEOF
if [[ -z "$NCU" ]]; then
    skip_step ncu "$BENCH_LOG" 0 "ncu not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/nsight-compute)"
elif (( $(remaining) >= 90 )); then
    gpu_step ncu "$BENCH_LOG" 90 0 "'$NCU' --clock-control none --print-details all --kernel-name regex:'implicit_gemm_(wmma_async|mma|wgmma)_kernel' --launch-count 3 --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats --section WarpStateStats --section InstructionStats --section SourceCounters --section Occupancy --section LaunchStats $PY $NCU_PY 2>&1 | tee /tmp/rcm_fsad_ncu.txt; rc=\${PIPESTATUS[0]}; grep -q 'No kernels were profiled' /tmp/rcm_fsad_ncu.txt && exit 3; exit \$rc"
else
    skip_step ncu "$BENCH_LOG" 0 "not enough time left for Nsight Compute"
fi
# Which kernels the benchmark's time goes to. Its tables go to bench.log only, no file of its own: $OUT
# already holds 7 files.
if (( $(remaining) >= 60 )); then
    gpu_step profile "$BENCH_LOG" 60 0 "$PY -m benchmarks.profile_kernels --device cuda --repeats 5"
else
    skip_step profile "$BENCH_LOG" 0 "not enough time left for the kernel profile"
fi

# ---- 13 what a call costs the host ----------------------------------------------------------------------
# Since session 29 autograd is a C++ kernel (csrc/autograd.cpp): NOTES says what these rows should show.
# Its table goes to bench.log only: $OUT already holds 7 files.
if (( $(remaining) >= 30 )); then
    gpu_step overhead "$BENCH_LOG" 30 0 "$PY -m benchmarks.call_overhead --device cuda"
else
    skip_step overhead "$BENCH_LOG" 0 "not enough time left for the cost of a call"
fi

# ---- 14 a depthwise layer, then 16 offset groups ---------------------------------------------------------
# What the CUDA paths make of one channel a conv group (NOTES, session 19), then of a sample's corners
# feeding 4 channels instead of 64 (session 22): rows in bench.log only, the depthwise case's first.
if (( $(remaining) >= 60 )); then
    gpu_step grouped "$BENCH_LOG" 120 0 "$PY -m benchmarks --device cuda --cases n8_c64_56x56_depthwise n8_c64_56x56_og16 --no-reference --no-write"
else
    skip_step grouped "$BENCH_LOG" 0 "not enough time left for the depthwise case"
fi

# ---- 15 torch.compile of the reference ------------------------------------------------------------------
if (( $(remaining) >= 90 )); then
    gpu_step compile "$BENCH_LOG" 200 0 "$PY -m benchmarks --device cuda --compile --cases n8_c256_14x14 --dtypes fp32 bf16 --no-write"
else
    skip_step compile "$BENCH_LOG" 0 "not enough time left for torch.compile of the reference"
fi

# ---- summary ----------------------------------------------------------------------------------------
rm -f "$OUT"/*.tmp  # half-written results of a step cut short: the device tool brings back 8 files at most
TOTAL=$(( SECONDS - START ))
{
    echo "total ${TOTAL}s (budget ${BUDGET_S}s)"
    (( ${#OPTIONAL_FAILED[@]} )) && echo "optional steps that failed: ${OPTIONAL_FAILED[*]}"
    if (( ${#FAILED[@]} )); then
        echo "STATUS: FAIL (${#FAILED[@]} failed: ${FAILED[*]}${SKIPPED_REQUIRED[*]:+; skipped: ${SKIPPED_REQUIRED[*]}})"
    elif (( ${#SKIPPED_REQUIRED[@]} )); then
        echo "STATUS: INCOMPLETE (required steps skipped: ${SKIPPED_REQUIRED[*]})"
    else
        echo "STATUS: OK"
    fi
    if [[ -s $GOALS_MD ]]; then
        echo; echo "goals:"; cat "$GOALS_MD"
    fi
    echo "files in $OUT:"
    ls -l "$OUT"
} >> "$SUMMARY"
echo
cat "$SUMMARY"
if (( ${#FAILED[@]} )); then
    exit 1
elif (( ${#SKIPPED_REQUIRED[@]} )); then
    exit 2
fi
exit 0
