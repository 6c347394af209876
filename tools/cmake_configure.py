"""Configures the CMake build of the C++ operator library against the torch in this Python.

usage: python tools/cmake_configure.py BUILD_DIR
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from build_env import DEFAULT_ARCH_LIST, find_cuda_home, find_cuda_library, wheel_cuda_include_dirs

import torch


def main(build_dir: str) -> int:
    root = Path(__file__).resolve().parent.parent
    cuda_home = find_cuda_home()
    args = [
        "cmake", "-S", str(root), "-B", build_dir, "-G", "Ninja",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        f"-DRCM_FSAD_WITH_CUDA={'ON' if cuda_home else 'OFF'}",
    ]
    if cuda_home:
        args += [
            f"-DCMAKE_CUDA_COMPILER={cuda_home}/bin/nvcc",
            f"-DCUDAToolkit_ROOT={cuda_home}",
            f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}",
            f"-DRCM_FSAD_EXTRA_INCLUDE_DIRS={';'.join(wheel_cuda_include_dirs())}",
        ]
        nvrtc = find_cuda_library(cuda_home, "nvrtc")
        if nvrtc:
            args.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc}")
    env = dict(os.environ)
    if cuda_home:
        # An explicit arch list keeps torch's CMake from compiling a GPU-detection probe.
        env.update(CUDA_HOME=cuda_home, TORCH_CUDA_ARCH_LIST=env.get("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST))
    return subprocess.call(args, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
