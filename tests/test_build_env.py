"""The build's probe for OpenMP (tools/build_env.py), which decides whether setup.py builds the CPU
kernels with -fopenmp."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from build_env import compiler_does_openmp  # noqa: E402


def test_openmp_probe_answers_for_the_compiler_it_is_given(tmp_path):
    assert compiler_does_openmp()  # this machine's c++ (g++) does OpenMP: the package is built with it
    assert not compiler_does_openmp("/bin/false")
    assert not compiler_does_openmp(str(tmp_path / "no-such-compiler"))
