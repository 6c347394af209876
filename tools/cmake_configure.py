"""Configures the CMake build of the C++ operator library against the torch in this Python.

usage: python tools/cmake_configure.py BUILD_DIR
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from build_env import cuda_arch_list, find_cuda_home, find_cuda_library, wheel_cuda_include_dirs

import torch


def main(build_dir: str) -> int:
    root = Path(__file__).resolve().parent.parent
    cuda_home = find_cuda_home()
    if cuda_home and torch.version.cuda is None:
        print(f"cmake_configure: torch {torch.__version__} is not a CUDA build: configuring for the CPU only",
              file=sys.stderr)
        cuda_home = None
    # This Python's ninja (a venv's) even where the venv is not activated; CMake's default generator without.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    generator = ["-G", "Ninja"] if shutil.which("ninja", path=path) else []
    args = [
        "cmake", "-S", str(root), "-B", build_dir, *generator,
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
    env = dict(os.environ, PATH=path)
    if cuda_home:
        # The archs setup.py builds for; explicit, which also keeps torch's CMake from compiling a
        # GPU-detection probe.
        env.update(CUDA_HOME=cuda_home, TORCH_CUDA_ARCH_LIST=cuda_arch_list())
    return subprocess.call(args, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
