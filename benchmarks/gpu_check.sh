#!/usr/bin/env bash
# The one prepared check for a GPU machine (SPEC section 3): H200, system-wide torch (2.11) + torchvision,
# nvcc 13.0, no network. Run from anywhere:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Steps, in order (each one's output is tee'd into a log under $OUT; a failing step does not stop the
# ones after it):
#   1 env        nvidia-smi, nvcc, python/torch/torchvision/pytest/ninja versions   -> build.log
#   2 build      MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python setup.py build_ext --inplace -> build.log
#   3 info       python -m rcm_fsad_ops info                                        -> build.log
#   4 tests      python -m pytest tests -x -q -k cuda (CUDA parity tests)           -> checks.log
#   5 memcheck   compute-sanitizer --tool memcheck on small forward+backward cases, four CUDA
#                forward algorithms and the deterministic backward, four dtypes (every CUDA kernel)
#                                                                                   -> checks.log
#   6 racecheck  the same cases in float32/float16                                  -> checks.log
#   7 synccheck  the same cases in float32/float16                                  -> checks.log
#   8 bench      python -m benchmarks --device cuda --out $OUT                      -> bench.log, cuda-*.json/.md
#   extra, only while the time budget lasts:
#   9 profile    per-kernel device time of each implementation (python -m benchmarks.profile_kernels
#                --device cuda --repeats 5; tables only)                            -> bench.log
#  10 bench-tf32 the fp32 benchmark with TF32 allowed on both sides (table only)    -> bench.log
#  11 ncu        Nsight Compute on one launch of each tensor-core forward kernel (cp.async WMMA and
#                mma.sync) at N32 C256 56x56 bf16: throughput, issue slots, warp stalls and where -> bench.log
#  12 compile    benchmark incl. torch.compile(reference) on the smallest case      -> bench.log, cuda-compile-*.json
#
# $OUT/summary.txt lists every step (OK / FAIL / SKIP, exit code, seconds) and a final STATUS line;
# the script exits 0 when all ran and passed, 1 when any step failed, 2 when a required step was skipped.
# Files in $OUT are kept to at most 7 (the device tool brings back 8 at most).
#
# Environment: OUT (default /tmp/gpu_check_out), PYTHON (default: python, else python3),
# BUDGET_S (total time budget in seconds, default 480; each step's timeout is capped by what is left),
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
SKIPPED_REQUIRED=()
{
    echo "gpu_check.sh  $(date -Is)"
    echo "repo $REPO  python $PY  budget ${BUDGET_S}s  sanitizer ${SANITIZER:-not found}  ncu ${NCU:-not found}"
    printf '%-10s %-6s %5s %7s  %s\n' step status rc seconds log
} > "$SUMMARY"

remaining() { echo $(( BUDGET_S - (SECONDS - START) )); }

# step NAME LOG CAP_SECONDS REQUIRED(1/0) COMMAND...
# Runs COMMAND through bash under `timeout`, min(CAP, time left); appends to LOG and echoes to stdout.
step() {
    local name="$1" log="$2" cap="$3" required="$4"
    shift 4
    local cmd="$*"
    local left
    left=$(remaining)
    local limit=$(( cap < left ? cap : left ))
    if (( limit < 15 )); then
        echo "===== [$name] SKIPPED: only ${left}s of the ${BUDGET_S}s budget left" | tee -a "$log"
        printf '%-10s %-6s %5s %7s  %s\n' "$name" SKIP - 0 "$(basename "$log") (out of time)" >> "$SUMMARY"
        (( required )) && SKIPPED_REQUIRED+=("$name")
        return 0
    fi
    local shown="${cmd#$'\n'}"
    [[ "$shown" == *$'\n'* ]] && shown="${shown%%$'\n'*} ..."
    echo "===== [$name] $(date +%T) timeout ${limit}s: $shown" | tee -a "$log"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" bash -c "$cmd" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    local dt=$(( SECONDS - t0 ))
    local status=OK
    if (( rc != 0 )); then
        status=FAIL
        FAILED+=("$name")
        (( rc == 124 || rc == 137 )) && echo "===== [$name] TIMED OUT after ${limit}s" | tee -a "$log"
    fi
    echo "===== [$name] $status (rc=$rc, ${dt}s)" | tee -a "$log"
    printf '%-10s %-6s %5s %7s  %s\n' "$name" "$status" "$rc" "$dt" "$(basename "$log")" >> "$SUMMARY"
}

skip_step() {  # skip_step NAME LOG REQUIRED REASON
    echo "===== [$1] SKIPPED: $4" | tee -a "$2"
    printf '%-10s %-6s %5s %7s  %s\n' "$1" SKIP - 0 "$(basename "$2") ($4)" >> "$SUMMARY"
    (( $3 )) && SKIPPED_REQUIRED+=("$1")
}

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
step build "$BUILD_LOG" 330 1 "MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 $PY setup.py build_ext --inplace"

# ---- 3 info -----------------------------------------------------------------------------------------
step info "$BUILD_LOG" 60 1 "
$PY -m rcm_fsad_ops info || { echo '(python -m rcm_fsad_ops info failed; asking the package directly)';
$PY -c 'import json, rcm_fsad_ops; print(json.dumps(rcm_fsad_ops.info(), indent=2))'; }
"

# ---- 4 CUDA parity tests ----------------------------------------------------------------------------
if $PY -c 'import pytest' >/dev/null 2>&1; then
    step tests "$CHECKS_LOG" 180 1 "$PY -m pytest tests -x -q -rfEs -k cuda -p no:cacheprovider"
else
    skip_step tests "$CHECKS_LOG" 1 "pytest is not installed for $PY"
fi

# ---- 5 compute-sanitizer memcheck on a small case -----------------------------------------------------
SMALL_PY=/tmp/rcm_fsad_sanitizer_small.py
cat > "$SMALL_PY" <<'PYEOF'
"""Small deform_conv2d forward+backward cases on CUDA, for compute-sanitizer: every CUDA kernel
(tensor-core (WMMA and mma.sync) and CUDA-core implicit-GEMM forward, columns forward, im2col, col2im, and the
deterministic backward's input-gradient kernel). The implicit_gemm runs allow TF32, so that float32
takes the tensor-core kernel too. 160 output channels: the mma.sync kernel's 128 x 256 blocks, whose
warps trade sampled rows through shared memory. The small cases split the implicit-GEMM forward over kernel points
(its tiles do not fill the GPU), the last case (36864 output pixels) does not. RCM_SANITIZER_QUICK=1:
float32 and float16 only, and not the last case (racecheck and synccheck look at shared memory and
barriers, which are the same either way)."""
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
    (4, 8, 8, 96, 96, 3, 1, 1, 1, 1, 1, True, False),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
if os.environ.get("RCM_SANITIZER_QUICK") == "1":
    DTYPES = DTYPES[:2]
    CASES = CASES[:-1]
# (forward algorithm, deterministic backward)
MODES = [("implicit_gemm", False), ("implicit_gemm_mma", False), ("implicit_gemm_simt", False), ("columns", False),
         ("implicit_gemm", True)]
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # for PyTorch versions that ask for it
RUNS = [(case, mode) for case in CASES for mode in MODES]
for (n, c_in, c_out, h, w, k, s, p, d, groups, offset_groups, use_mask, channels_last), (algo, det) in RUNS:
    os.environ["RCM_FSAD_DEFORM_CONV_ALGO"] = algo  # read by the CUDA forward at each call
    torch.backends.cuda.matmul.allow_tf32 = algo in ("implicit_gemm", "implicit_gemm_mma")
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
        print("ok", algo, "deterministic" if det else "", (n, c_in, c_out, h, w, s, p, d, groups, offset_groups,
              use_mask, channels_last), dtype,
              tuple(out.shape), flush=True)
print("sanitizer small cases: done")
PYEOF

if [[ -n "$SANITIZER" ]]; then
    # No caching allocator: out-of-bounds accesses inside a pooled block would go unseen otherwise.
    step memcheck "$CHECKS_LOG" 180 1 "PYTORCH_NO_CUDA_MEMORY_CACHING=1 '$SANITIZER' --tool memcheck --leak-check no --error-exitcode 86 --print-limit 40 $PY $SMALL_PY"
else
    skip_step memcheck "$CHECKS_LOG" 1 "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"
fi

# Race and barrier checks on fewer dtypes, to leave time for the benchmarks.
for tool in racecheck synccheck; do
    if [[ -n "$SANITIZER" ]]; then
        step "$tool" "$CHECKS_LOG" 100 1 "RCM_SANITIZER_QUICK=1 PYTORCH_NO_CUDA_MEMORY_CACHING=1 '$SANITIZER' --tool $tool --error-exitcode 86 --print-limit 40 $PY $SMALL_PY"
    else
        skip_step "$tool" "$CHECKS_LOG" 1 "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"
    fi
done

# ---- 6 benchmarks -------------------------------------------------------------------------------------
step bench "$BENCH_LOG" 270 1 "$PY -m benchmarks --device cuda --out '$OUT'"

# ---- 7 extra while time is left -------------------------------------------------------------------
# Which kernels the benchmark's time goes to. Its tables go to bench.log only, no file of its own: with
# the compile step's JSON, $OUT already holds 7 files.
if (( $(remaining) >= 90 )); then
    step profile "$BENCH_LOG" 60 0 "$PY -m benchmarks.profile_kernels --device cuda --repeats 5"
else
    skip_step profile "$BENCH_LOG" 0 "not enough time left for the kernel profile"
fi
# fp32 with TF32 allowed on both sides (our tensor-core kernel against torchvision's TF32 GEMM).
if (( $(remaining) >= 150 )); then
    step bench-tf32 "$BENCH_LOG" 90 0 "$PY -m benchmarks --device cuda --tf32 --dtypes fp32 --no-write"
else
    skip_step bench-tf32 "$BENCH_LOG" 0 "not enough time left for the TF32 benchmark"
fi
# Where the tensor-core forward kernels lose time, from the hardware counters: one launch of each at the
# bf16 goal's shape, the clocks left as they are (--clock-control none). SourceCounters names the
# instructions where warps stall most (the build has -lineinfo).
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
    for algo in ("implicit_gemm", "implicit_gemm_mma"):
        os.environ["RCM_FSAD_DEFORM_CONV_ALGO"] = algo
        rcm_fsad_ops.deform_conv2d(t["input"], t["offset"], t["weight"], t.get("bias"), mask=t.get("mask"),
                                   **case.kwargs())
        torch.cuda.synchronize()
        print("ncu forward:", algo, flush=True)
PYEOF
if [[ -z "$NCU" ]]; then
    skip_step ncu "$BENCH_LOG" 0 "ncu not found (PATH, /usr/local/cuda*/bin, /opt/nvidia/nsight-compute)"
elif (( $(remaining) >= 100 )); then
    step ncu "$BENCH_LOG" 90 0 "'$NCU' --clock-control none --kernel-name regex:'implicit_gemm_(wmma_async|mma)_kernel' --launch-count 2 --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats --section WarpStateStats --section InstructionStats --section SourceCounters --section Occupancy --section LaunchStats $PY $NCU_PY"
else
    skip_step ncu "$BENCH_LOG" 0 "not enough time left for Nsight Compute"
fi
if (( $(remaining) >= 90 )); then
    step compile "$BENCH_LOG" 200 0 "rm -rf /tmp/gpu_check_compile && $PY -m benchmarks --device cuda --compile --cases n8_c256_14x14 --dtypes fp32 bf16 --out /tmp/gpu_check_compile; rc=\$?; for f in /tmp/gpu_check_compile/cuda-*.json; do [[ -e \$f ]] && cp \"\$f\" '$OUT/'\"\$(basename \"\$f\" | sed 's/^cuda-/cuda-compile-/')\"; done; exit \$rc"
else
    skip_step compile "$BENCH_LOG" 0 "not enough time left for torch.compile of the reference"
fi

# ---- summary ----------------------------------------------------------------------------------------
TOTAL=$(( SECONDS - START ))
{
    echo "total ${TOTAL}s (budget ${BUDGET_S}s)"
    if (( ${#FAILED[@]} )); then
        echo "STATUS: FAIL (${#FAILED[@]} failed: ${FAILED[*]}${SKIPPED_REQUIRED[*]:+; skipped: ${SKIPPED_REQUIRED[*]}})"
    elif (( ${#SKIPPED_REQUIRED[@]} )); then
        echo "STATUS: INCOMPLETE (required steps skipped: ${SKIPPED_REQUIRED[*]})"
    else
        echo "STATUS: OK"
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
