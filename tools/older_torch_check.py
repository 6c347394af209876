"""Checks the sources against a torch older than the pinned one, as C++17 (what torch before 2.12 compiles
extensions as; the pinned 2.14 compiles them as C++20), so that they keep to C++17 and to an older torch's
API, and a GPU machine with an older torch (2.11 in sessions so far) meets no compile error.

Against torch 2.13.0+cpu (OLDER_TORCH: the CPU wheel on this machine's disk, found through pip's
find-links, or else from PyTorch's CPU index; where neither has it, the check says so and passes, unless
RCM_FSAD_REQUIRE_OLDER_TORCH=1, which .ci/run sets) in a venv of its own, on a copy of the working tree
(edits included, the checkout's own module left alone), all under build/older-torch/:
  1. the CPU build (setup.py, RCM_FSAD_CXX_STD=c++17), then tools/older_torch_smoke.py on it: the op against
     the float64 reference;
  2. where a CUDA toolkit is found (as setup.py finds one), the CUDA sources through nvcc's front end only
     (-cuda: parsed and checked, no device code generated) as C++17 against the same torch's headers.
A warning or an error in the sources fails it; torch 2.13's own headers draw a few C++20-extension
warnings, which are not ours. Run by the project's venv (make test-older-torch), whose nvidia-* wheels
hold the CUDA headers the toolkit lacks. Idempotent: the venv is made once, ninja rebuilds only what
changed, and the front end runs again only when something it reads changed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from build_env import find_cuda_home, wheel_cuda_include_dirs  # noqa: E402

OLDER_TORCH = os.environ.get("OLDER_TORCH", "2.13.0+cpu")
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
WORK = ROOT / "build" / "older-torch"
VENV = WORK / "venv"
SRC = WORK / "src"
PYTHON = VENV / "bin" / "python"
# What setup.py needs from the tree, and the smoke test.
COPIED = ["csrc", "rcm_fsad_ops", "tools", "setup.py"]


def fail(message: str) -> None:
    sys.exit(f"older_torch_check: {message}")


def make_venv() -> bool:
    """Whether the venv has the older torch: from pip's own sources (this machine's disk), else from PyTorch's
    CPU index, where the +cpu wheels live (PyPI has none)."""
    stamp = VENV / f".torch-{OLDER_TORCH}"
    if stamp.exists():
        return True
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    install = [str(PYTHON), "-m", "pip", "install", "-q", f"torch=={OLDER_TORCH}", "ninja", "numpy"]
    from_index = ["--timeout", "30", "--retries", "1", "--extra-index-url", PYTORCH_CPU_INDEX]
    if subprocess.run(install).returncode != 0 and subprocess.run(install + from_index).returncode != 0:
        return False
    stamp.touch()
    return True


def copy_sources() -> None:
    """The working tree's sources, deletions included, with their times (so ninja rebuilds only what changed);
    the build's objects under SRC/build stay."""
    SRC.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("*.so", "__pycache__")
    for name in COPIED:
        target = SRC / name
        if target.is_dir():
            shutil.rmtree(target)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, target, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, target)


def warnings_in_sources(log: str) -> list[str]:
    """The compilers' warnings and errors located in the copy's csrc/ (g++: `path:line:col: warning`, nvcc's
    front end: `path(line): warning`)."""
    csrc = re.escape(str(SRC / "csrc"))
    return re.findall(rf"^{csrc}/\S+?(?::\d+:\d+:|\(\d+\):) (?:warning|error|fatal error)\b.*$", log, re.M)


def checked_run(name: str, command: list[str], log_path: Path, **kwargs) -> None:
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)
    log_path.write_text(result.stdout)
    found = warnings_in_sources(result.stdout)
    if result.returncode != 0 or found:
        print(result.stdout if result.returncode != 0 else "\n".join(found))
        fail(f"{name}: {'failed' if result.returncode != 0 else 'warnings in the sources'} under torch "
             f"{OLDER_TORCH} as C++17 (whole log: {log_path.relative_to(ROOT)})")


def cpu_build() -> None:
    env = dict(os.environ, RCM_FSAD_CPU_ONLY="1", RCM_FSAD_CXX_STD="c++17", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    checked_run("the CPU build", [str(PYTHON), "setup.py", "-q", "build_ext", "--inplace"], WORK / "build.log",
                cwd=SRC, env=env)


def cuda_front_end() -> None:
    cuda_home = find_cuda_home()
    if cuda_home is None:
        print("older_torch_check: no CUDA toolkit found: the CUDA sources are not checked")
        return
    torch_flags = subprocess.run(
        [str(PYTHON), "-c", "from torch.utils import cpp_extension as c; "
                            "print(*('-I' + p for p in c.include_paths()), *c.COMMON_NVCC_FLAGS)"],
        check=True, stdout=subprocess.PIPE, text=True).stdout.split()
    # A header that torch's CUDA builds generate and its CPU wheel lacks, as the CUDA wheels have it.
    stand_in = WORK / "cuda-include"
    macros = stand_in / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    macros.parent.mkdir(parents=True, exist_ok=True)
    macros.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    out = WORK / "cuda"
    out.mkdir(exist_ok=True)
    nvcc = [os.path.join(cuda_home, "bin", "nvcc"), "-cuda", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a",
            f"-I{SRC / 'csrc'}", f"-I{stand_in}", *torch_flags,
            *(f for d in wheel_cuda_include_dirs() for f in ("-isystem", d))]
    sources = sorted((SRC / "csrc" / "cuda").glob("*.cu"))
    # The front end takes a minute on two cores: it runs again only where a source (copied with its time),
    # this script, the venv or the command changed since its last pass.
    passed = out / "passed"
    inputs = [*(SRC / "csrc").rglob("*"), Path(__file__), VENV / f".torch-{OLDER_TORCH}"]
    if (passed.exists() and passed.read_text() == " ".join(nvcc) and
            passed.stat().st_mtime > max(f.stat().st_mtime for f in inputs)):
        print("older_torch_check: the CUDA sources are as they passed nvcc's front end last time")
        return
    with ThreadPoolExecutor(max_workers=int(os.environ.get("MAX_JOBS", "2"))) as pool:
        list(pool.map(lambda cu: checked_run(f"nvcc's front end on {cu.name}", [*nvcc, str(cu), "-o", os.devnull],
                                             out / f"{cu.stem}.log"), sources))
    passed.write_text(" ".join(nvcc))
    print(f"older_torch_check: {len(sources)} CUDA sources pass nvcc's front end as C++17 against torch {OLDER_TORCH}")


def main() -> None:
    if not make_venv():
        message = (f"torch {OLDER_TORCH} is neither in pip's sources here nor reachable at {PYTORCH_CPU_INDEX}: "
                   "the sources are not checked against it")
        if os.environ.get("RCM_FSAD_REQUIRE_OLDER_TORCH") == "1":
            fail(message)
        print(f"older_torch_check: {message} (RCM_FSAD_REQUIRE_OLDER_TORCH=1, as CI sets it, makes that a failure)")
        return
    copy_sources()
    cpu_build()
    subprocess.run([str(PYTHON), str(ROOT / "tools" / "older_torch_smoke.py")], check=True,
                   env=dict(os.environ, PYTHONPATH=str(SRC)))
    cuda_front_end()


if __name__ == "__main__":
    main()
