"""Builds rcm_fsad_ops._C: the operator library (CPU always, CUDA whenever a toolkit is found).

Environment:
  RCM_FSAD_CPU_ONLY=1     build without CUDA even when a toolkit is present.
  CUDA_HOME               the CUDA toolkit root; otherwise found from the nvcc on PATH (following a
                          wrapper script to the compiler it execs) or /usr/local/cuda.
  TORCH_CUDA_ARCH_LIST    target architectures; default: the visible GPU's, or 9.0 (Hopper) when
                          no GPU is visible.
  MAX_JOBS                parallel compile jobs (ninja).
"""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))
from build_env import DEFAULT_ARCH_LIST, compiler_does_openmp, find_cuda_home, wheel_cuda_include_dirs  # noqa: E402

CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    # torch.utils.cpp_extension reads CUDA_HOME once, at import.
    os.environ["CUDA_HOME"] = CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def cuda_arch_list() -> str:
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        archs = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in archs)
    return DEFAULT_ARCH_LIST


def write_build_config(with_cuda: bool, archs: str) -> str:
    """A generated header telling the module how it was built; returns its include dir."""
    out = ROOT / "build" / "generated"
    out.mkdir(parents=True, exist_ok=True)
    text = (
        "#pragma once\n"
        + ("#define RCM_FSAD_WITH_CUDA 1\n" if with_cuda else "")
        + f'#define RCM_FSAD_CUDA_ARCHS "{archs if with_cuda else ""}"\n'
    )
    header = out / "rcm_fsad_build_config.h"
    if not header.exists() or header.read_text() != text:
        header.write_text(text)
    return str(out)


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # -fopenmp: at::parallel_for is a header template that runs its loop serially unless the
    # including file is compiled with OpenMP (ATen's INTRA_OP_PARALLEL). The library links torch's
    # own libgomp (same soname, already loaded by torch). A compiler without OpenMP still builds
    # it, with serial CPU kernels (info() says cpu_parallel: False, and a test fails).
    openmp = ["-fopenmp"] if compiler_does_openmp() else []
    if not openmp:
        print("warning: the C++ compiler does not build OpenMP programs; the CPU kernels will run on one thread",
              file=sys.stderr)
    cxx_flags = ["-O3"] + openmp
    link_flags = openmp
    with_cuda = CUDA_HOME is not None
    archs = ""
    if with_cuda:
        archs = cuda_arch_list()
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
    include_dirs = [str(ROOT / "csrc"), write_build_config(with_cuda, archs)]
    if not with_cuda:
        return CppExtension("rcm_fsad_ops._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    return CUDAExtension(
        "rcm_fsad_ops._C",
        sources,
        include_dirs=include_dirs + wheel_cuda_include_dirs(),
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=link_flags,
    )


setup(
    name="rcm_fsad_ops",
    version="0.1.0",
    description="Modulated deformable convolution (DCNv2) as a PyTorch C++/CUDA extension, "
    "for few-shot anomaly detection (RCM-FSAD)",
    # benchmarks/ stays in the checkout: a top-level package of that name would clash in
    # site-packages, and its runner writes its results next to itself.
    packages=find_packages(include=["rcm_fsad_ops", "rcm_fsad_ops.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.4", "torchvision"],
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["rcm-fsad=rcm_fsad_ops.cli:main"]},
)
