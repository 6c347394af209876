"""The CPU forward's loops over samples vectorise (csrc/cpu/sampling.h, forward_samples): GCC's report on the CPU
source, compiled with the flags of this checkout's build. They do only while the shared per-sample math stays
branch-free and the build keeps -fno-trapping-math (README: CPU), which an edit far from the loops may undo
without changing a result or failing another test."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "csrc" / "cpu" / "deform_conv2d_cpu.cpp"
SAMPLING = ROOT / "csrc" / "cpu" / "sampling.h"


def build_command() -> Optional[Tuple[str, List[str], List[str]]]:
    """The compiler and the flags before and after the source that setup.py's in-place build (ninja) compiled the
    C++ sources with, or None where the checkout was not built in place."""
    ninja_files = sorted(ROOT.glob("build/temp.*/build.ninja"))
    if not ninja_files:
        return None
    variables = dict(re.findall(r"^(cxx|cflags|post_cflags) = (.*)$", ninja_files[-1].read_text(), re.MULTILINE))
    if set(variables) != {"cxx", "cflags", "post_cflags"}:
        return None
    return variables["cxx"], shlex.split(variables["cflags"]), shlex.split(variables["post_cflags"])


def forward_sample_loops() -> List[int]:
    """The lines of forward_samples' loops along the pixels: the fields' loads, sample_position, sample_point_at."""
    lines = SAMPLING.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "inline void forward_samples(" in line)
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    return [i + 1 for i in range(start, end) if "for (int64_t j = 0; j < len; ++j)" in lines[i]]


def test_the_sampling_has_the_three_loops():
    assert len(forward_sample_loops()) == 3


@pytest.mark.skipif(build_command() is None, reason="the extension was not built in place (make build)")
def test_forward_sample_loops_vectorise_in_the_avx2_build(tmp_path):
    cxx, cflags, post_cflags = build_command()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    if "Free Software Foundation" not in version:  # what GCC's --version says and clang's does not
        pytest.skip(f"-fopt-info is GCC's; the build's compiler is {version.splitlines()[0] if version else cxx}")
    result = subprocess.run([cxx, *cflags, "-c", str(SOURCE), "-o", str(tmp_path / "cpu.o"), *post_cflags,
                             "-fopt-info-vec-optimized"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    # 32-byte vectors: the AVX2 build's (the baseline build's are 16 bytes at most).
    vectorised = {int(line) for line in
                  re.findall(r"sampling\.h:(\d+):\d+: optimized: loop vectorized using 32 byte vectors", result.stderr)}
    loops = forward_sample_loops()
    # The last two compute the samples; the first, the loads, gathers and is not held to it.
    assert set(loops[1:]) <= vectorised, (loops, sorted(vectorised))
