"""The build's probes (tools/build_env.py), shared by setup.py and tools/cmake_configure.py: whether the C++
compiler does OpenMP, where the CUDA toolkit is, which archs to build for."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import build_env  # noqa: E402
from build_env import compiler_does_openmp, compiler_does_openmp_simd, cuda_arch_list, find_cuda_home  # noqa: E402


def test_openmp_probe_answers_for_the_compiler_it_is_given(tmp_path):
    assert compiler_does_openmp()  # this machine's c++ (g++) does OpenMP: the package is built with it
    assert compiler_does_openmp("env c++")  # a launcher before the compiler, as CXX="ccache g++" has
    assert not compiler_does_openmp("/bin/false")
    assert not compiler_does_openmp(str(tmp_path / "no-such-compiler"))


def test_openmp_simd_probe_answers_for_the_compiler_it_is_given(tmp_path):
    """The fallback for a compiler without OpenMP's runtime: its simd pragma alone (g++ takes it)."""
    assert compiler_does_openmp_simd()
    assert not compiler_does_openmp_simd("/bin/false")
    assert not compiler_does_openmp_simd(str(tmp_path / "no-such-compiler"))


def fake_toolkit(root: Path) -> str:
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_bytes(b"\x7fELF not really a compiler")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return str(root)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No toolkit variables, and a PATH with no nvcc on it."""
    for name in ("CUDA_HOME", "CUDA_PATH", "RCM_FSAD_CPU_ONLY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(build_env.os.path, "isfile",
                        lambda p, isfile=os.path.isfile: isfile(p) and not p.startswith("/usr/local/cuda/"))


def test_toolkit_search_order(clean_env, monkeypatch, tmp_path):
    """CUDA_HOME, then CUDA_PATH, then the nvcc on PATH; a variable that names no toolkit is passed over."""
    home, path_root, on_path = (fake_toolkit(tmp_path / name) for name in ("home", "cuda_path", "on_path"))
    assert find_cuda_home() is None
    monkeypatch.setenv("PATH", os.path.join(on_path, "bin"))
    assert find_cuda_home() == on_path
    monkeypatch.setenv("CUDA_PATH", path_root)
    assert find_cuda_home() == path_root
    monkeypatch.setenv("CUDA_HOME", home)
    assert find_cuda_home() == home
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "nothing-here"))
    assert find_cuda_home() == path_root


def test_nvcc_wrapper_script_is_followed_to_its_toolkit(clean_env, monkeypatch, tmp_path):
    """The nvcc on PATH may be a small script that execs the real compiler: the toolkit is the latter's."""
    real = fake_toolkit(tmp_path / "opt" / "cuda-13.0")
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    script = wrappers / "nvcc"
    script.write_text(f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(wrappers))
    assert find_cuda_home() == real


@pytest.mark.parametrize("value, cpu_only", [("1", True), ("true", True), ("ON", True), ("0", False),
                                             ("no", False), ("", False)])
def test_cpu_only_switch(clean_env, monkeypatch, tmp_path, value, cpu_only):
    monkeypatch.setenv("CUDA_HOME", fake_toolkit(tmp_path / "cuda"))
    monkeypatch.setenv("RCM_FSAD_CPU_ONLY", value)
    assert (find_cuda_home() is None) == cpu_only


def test_cpu_only_switch_rejects_what_it_cannot_read(clean_env, monkeypatch):
    monkeypatch.setenv("RCM_FSAD_CPU_ONLY", "maybe")
    with pytest.raises(ValueError, match="RCM_FSAD_CPU_ONLY must be"):
        find_cuda_home()


def test_arch_list(monkeypatch):
    """TORCH_CUDA_ARCH_LIST with ';' or spaces comes out ';'-separated (what info() splits on); without
    it, and without a GPU, Hopper with its arch-specific features (wgmma) alone, so that no plain sm_90
    cubin competes with the sm_90a one; a visible Hopper GPU as 9.0a."""
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", " 8.0  8.6;9.0+PTX ")
    assert cuda_arch_list() == "8.0;8.6;9.0+PTX"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_arch_list() == "9.0a"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: ((9, 0), (8, 6))[i])
    assert cuda_arch_list() == "8.6;9.0a"
