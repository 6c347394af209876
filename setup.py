"""Builds rcm_fsad_ops._C: the operator library (CPU always, CUDA whenever a toolkit is found and
torch is a CUDA build).

Build against the torch you will run with, without pip's build isolation (which would install another
torch just for the build): ``pip install --no-build-isolation .``, or ``make build`` for the checkout.

Environment:
  RCM_FSAD_CPU_ONLY=1     build without CUDA even when a toolkit is present (also true/yes/on;
                          0/false/no/off or unset: CUDA where found; anything else raises).
  CUDA_HOME, CUDA_PATH    the CUDA toolkit root; otherwise found from the nvcc on PATH (following a
                          wrapper script to the compiler it execs) or /usr/local/cuda.
  TORCH_CUDA_ARCH_LIST    target architectures; default: the visible GPU's (Hopper's as 9.0a, with
                          wgmma), or 9.0a (Hopper with its arch-specific features) when no GPU is
                          visible.
  MAX_JOBS                parallel compile jobs (ninja).
  RCM_FSAD_CXX_STD        the C++ standard to compile as (c++17, say) in place of torch's choice.
"""
from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))
from build_env import (compiler_does_openmp, compiler_does_openmp_simd, cuda_arch_list, find_cuda_home,  # noqa: E402
                       wheel_cuda_include_dirs)

CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    # torch.utils.cpp_extension reads CUDA_HOME once, at import.
    os.environ["CUDA_HOME"] = CUDA_HOME
# The tools of this Python's environment (ninja) even where it is not activated (.venv/bin/python setup.py).
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:
    sys.exit(f"rcm_fsad_ops builds against the torch it will run with, and none is importable here ({exc}). "
             "Install torch first, then build without pip's build isolation: pip install --no-build-isolation .")

VERSION = re.search(r'^__version__ = "([^"]+)"', (ROOT / "rcm_fsad_ops" / "__init__.py").read_text(), re.M).group(1)


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
    # Without OpenMP, its simd pragma alone where the compiler takes it: the vectorised loops stay so.
    simd = [] if openmp else ["-fopenmp-simd"] if compiler_does_openmp_simd() else []
    if not openmp:
        print("warning: the C++ compiler does not build OpenMP programs; the CPU kernels will run on one thread",
              file=sys.stderr)
    # RCM_FSAD_CXX_STD (c++17, say): the C++ standard to compile as, in place of torch's (C++20 from torch 2.12,
    # C++17 before), to check that the sources keep to older torch's (tools/older_torch_check.py).
    std = [f"-std={os.environ['RCM_FSAD_CXX_STD']}"] if os.environ.get("RCM_FSAD_CXX_STD") else []
    # -fno-trapping-math: the CPU's loops over samples (cpu/sampling.h) vectorise only where GCC may compute
    # a float operation on every path, with no branch around it (which is all it changes: no floating-point
    # exception traps, the results the same, NaN and infinities included).
    cxx_flags = ["-O3", "-fno-trapping-math"] + openmp + simd + std
    link_flags = openmp
    with_cuda = CUDA_HOME is not None
    if with_cuda and torch.version.cuda is None:
        print(f"warning: a CUDA toolkit is at {CUDA_HOME} but torch {torch.__version__} is not a CUDA build: "
              "building for the CPU only", file=sys.stderr)
        with_cuda = False
    archs = ""
    if with_cuda:
        archs = cuda_arch_list()
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
    include_dirs = [str(ROOT / "csrc"), write_build_config(with_cuda, archs)]
    # For the build backend without ninja, which would otherwise rebuild nothing when only a header changed.
    depends = sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.cuh", recursive=True))
    if not with_cuda:
        return CppExtension("rcm_fsad_ops._C", sources, include_dirs=include_dirs, depends=depends,
                            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    # The CUDA headers of torch's wheels fill what the toolkit lacks (cusparse.h, cublas): searched after
    # every -I directory, the toolkit's among them, so that they never shadow its own headers.
    wheel_includes = [flag for include in wheel_cuda_include_dirs() for flag in ("-isystem", include)]
    return CUDAExtension(
        "rcm_fsad_ops._C",
        sources,
        include_dirs=include_dirs,
        depends=depends,
        extra_compile_args={"cxx": cxx_flags + wheel_includes, "nvcc": ["-O3", "-lineinfo"] + std + wheel_includes},
        extra_link_args=link_flags,
    )


setup(
    name="rcm_fsad_ops",
    version=VERSION,
    description="Modulated deformable convolution (DCNv2) as a PyTorch C++/CUDA extension, "
    "for few-shot anomaly detection (RCM-FSAD)",
    # benchmarks/ stays in the checkout: a top-level package of that name would clash in
    # site-packages, and its runner writes its results next to itself.
    packages=find_packages(include=["rcm_fsad_ops", "rcm_fsad_ops.*"]),
    # PEP 561: the package's own type hints, and those of its compiled module, for type checkers (setuptools 69
    # and later ship both files unasked; earlier ones need this).
    package_data={"rcm_fsad_ops": ["py.typed", "_C.pyi"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    # torchvision: what `rcm-fsad demo` and the benchmarks compare with; onnxscript: what torch's ONNX exporter
    # needs (and rcm_fsad_ops.onnx's translation table).
    extras_require={"demo": ["torchvision"], "onnx": ["onnxscript"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["rcm-fsad=rcm_fsad_ops.cli:main"]},
)
