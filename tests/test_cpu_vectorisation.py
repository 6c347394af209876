"""The CPU's loops over samples vectorise (csrc/cpu/sampling.h: SamplePositions, forward_samples,
backward_samples, and the steps along a sample's channels in sample_backward): GCC's report on the CPU source,
compiled with the flags of this checkout's build. They do only while the shared per-sample math stays branch-free
and the build keeps -fno-trapping-math (README: CPU), which an edit far from the loops may undo without changing a
result or failing another test."""
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


SAMPLE_LOOP = "for (int64_t j = 0; j < len; ++j)"
CHANNEL_STEP = "lane(l, base + l);"


def lines_in(function: str, marker: str) -> List[int]:
    """The lines of sampling.h in the body of the function whose signature has `function` that have `marker`."""
    lines = SAMPLING.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if function in line)
    indent = lines[start][:len(lines[start]) - len(lines[start].lstrip())]
    end = next(i for i in range(start, len(lines)) if lines[i] == indent + "}")
    return [i + 1 for i in range(start, end) if marker in lines[i]]


def sample_loops() -> List[int]:
    """The loops along the pixels that compute samples: sample_position's, sample_point_at's in the forward and
    in the backward (not the fields' loads, which gather)."""
    positions = lines_in("SamplePositions(const Sampling<scalar_t>& s,", SAMPLE_LOOP)
    return (positions[1:] + lines_in("inline void forward_samples(", SAMPLE_LOOP)
            + lines_in("inline void backward_samples(", SAMPLE_LOOP))


def channel_steps() -> List[int]:
    """The backward's loops over whole steps of channels (kLanes, then kLanes / 2)."""
    return lines_in("inline SampleSums<scalar_t> sample_backward(", CHANNEL_STEP)[:2]


def test_the_sampling_has_its_loops():
    assert len(lines_in("SamplePositions(const Sampling<scalar_t>& s,", SAMPLE_LOOP)) == 2
    assert len(sample_loops()) == 3
    assert len(channel_steps()) == 2


@pytest.mark.skipif(build_command() is None, reason="the extension was not built in place (make build)")
def test_sample_loops_vectorise_in_the_avx2_build(tmp_path):
    cxx, cflags, post_cflags = build_command()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    if "Free Software Foundation" not in version:  # what GCC's --version says and clang's does not
        pytest.skip(f"-fopt-info is GCC's; the build's compiler is {version.splitlines()[0] if version else cxx}")
    result = subprocess.run([cxx, *cflags, "-c", str(SOURCE), "-o", str(tmp_path / "cpu.o"), *post_cflags,
                             "-fopt-info-vec-optimized"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    # 32-byte vectors: the AVX2 build's (the baseline build's are 16 bytes at most). The float32 and float64
    # instantiations of a loop report the same line.
    vectorised = {int(line) for line in
                  re.findall(r"sampling\.h:(\d+):\d+: optimized: loop vectorized using 32 byte vectors", result.stderr)}
    loops = sample_loops() + channel_steps()
    assert set(loops) <= vectorised, (loops, sorted(vectorised))
