#!/usr/bin/env bash
# Builds the extension against an older torch, one that compiles extensions as C++17 (torch before 2.12;
# the pinned 2.14 compiles them as C++20), and runs tools/older_torch_smoke.py on that build: so that the
# sources keep to C++17 and to the API of the torch versions README promises, and a GPU machine with an
# older torch (2.11 in sessions so far) does not meet a compile error first.
#
# The torch is the CPU wheel on this machine's disk (OLDER_TORCH, found through pip's find-links), in a venv
# of its own; the build is CPU-only (the CUDA sources need a CUDA build of torch) and works on a copy of
# the sources, so that the checkout's own module is left alone. Idempotent: the venv is made once, and
# ninja rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

OLDER_TORCH=${OLDER_TORCH:-2.13.0+cpu}
VENV=build/older-torch/venv
SRC=build/older-torch/src
STAMP=$VENV/.torch-$OLDER_TORCH

if [ ! -f "$STAMP" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "torch==$OLDER_TORCH" ninja numpy
  touch "$STAMP"
fi

# The sources as they are in the working tree (edits and deletions included), their times kept for ninja,
# whose objects (under $SRC/build) stay.
mkdir -p "$SRC"
rm -rf "$SRC/csrc" "$SRC/rcm_fsad_ops" "$SRC/tools"
tar -c --exclude='*.so' --exclude=__pycache__ csrc rcm_fsad_ops tools setup.py | tar -x -C "$SRC"
# As C++17 (torch 2.13 would take C++20). GCC takes some C++20 as an extension, with a warning: torch's
# headers draw a few, the sources none.
LOG=build/older-torch/build.log
(cd "$SRC" && RCM_FSAD_CPU_ONLY=1 RCM_FSAD_CXX_STD=c++17 MAX_JOBS="${MAX_JOBS:-2}" \
  "../venv/bin/python" setup.py -q build_ext --inplace) > "$LOG" 2>&1 || { cat "$LOG"; exit 1; }
if grep -E "^[^ ]*/$SRC/csrc/[^ ]*: (warning|error)" "$LOG"; then
  echo "older_torch_check: the sources above draw warnings under torch $OLDER_TORCH as C++17 (whole log: $LOG)"
  exit 1
fi
PYTHONPATH="$SRC" "$VENV/bin/python" tools/older_torch_smoke.py
