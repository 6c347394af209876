"""Where the build finds CUDA, which archs it builds for, and whether its C++ compiler does OpenMP (or at
least OpenMP's simd pragma): shared by setup.py and tools/cmake_configure.py (torch-free at import)."""
from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import site
import subprocess
import sysconfig
import tempfile
from pathlib import Path

# Hopper (H100/H200) with its arch-specific features (9.0a: the wgmma kernel): the target when no GPU is
# visible to pick an arch from. One arch, so that the sm_90a cubin is the only code a Hopper GPU can
# load (beside a plain sm_90 one, which has no wgmma kernel, the driver's choice is not documented),
# and the kernels compile once rather than three times (sm_90a, sm_90 and compute_90 PTX: the CUDA file
# took 124 s of a 2-core build, 80 s now). Other GPUs: TORCH_CUDA_ARCH_LIST, or a build where the GPU is
# visible.
DEFAULT_ARCH_LIST = "9.0a"


def cuda_arch_list() -> str:
    """The archs to build for, separated by ';': TORCH_CUDA_ARCH_LIST (torch also takes spaces there), else
    those of the visible GPUs (Hopper's as 9.0a, with its wgmma), else DEFAULT_ARCH_LIST. (Imports torch
    only here.)"""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return ";".join(os.environ["TORCH_CUDA_ARCH_LIST"].replace(";", " ").split())
    import torch

    if torch.cuda.is_available():
        archs = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "") for major, minor in archs)
    return DEFAULT_ARCH_LIST


def _toolkit_root_of(nvcc: str) -> str | None:
    """The toolkit root of an nvcc binary, or of the compiler a small wrapper script execs."""
    real = os.path.realpath(nvcc)
    try:
        with open(real, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if head.startswith(b"#!"):
        match = re.search(rb"(/\S+)/bin/nvcc\b", head)
        return os.fsdecode(match.group(1)) if match else None
    return str(Path(real).parent.parent)


def _compiler_builds(flag: str, program: str, compiler: str | None) -> bool:
    """Whether the C++ compiler (CXX, else c++) builds and links `program` with `flag`."""
    cxx = shlex.split(compiler or os.environ.get("CXX") or "c++")  # CXX may carry a launcher: "ccache g++"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "probe.cpp"
        source.write_text(program)
        try:
            result = subprocess.run([*cxx, flag, str(source), "-o", str(Path(folder) / "probe")],
                                    capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return False
    return result.returncode == 0


def compiler_does_openmp(compiler: str | None = None) -> bool:
    """Whether the C++ compiler (CXX, else c++) builds and links a program with -fopenmp."""
    return _compiler_builds("-fopenmp", "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n",
                            compiler)


def compiler_does_openmp_simd(compiler: str | None = None) -> bool:
    """Whether the C++ compiler takes -fopenmp-simd: `#pragma omp simd` without OpenMP's runtime, for a
    compiler that lacks it (the CPU kernels' vectorised loops are written with that pragma)."""
    loop = "int main() {\n  int a[8] = {};\n#pragma omp simd\n  for (int i = 0; i < 8; ++i) a[i] = i;\n"
    return _compiler_builds("-fopenmp-simd", loop + "  return a[7] - 7;\n}\n", compiler)


def find_cuda_home() -> str | None:
    """CUDA_HOME, CUDA_PATH, the toolkit behind the nvcc on PATH, or /usr/local/cuda; None when
    RCM_FSAD_CPU_ONLY is set (1, true, yes, on) or no toolkit is found."""
    cpu_only = os.environ.get("RCM_FSAD_CPU_ONLY", "").strip().lower()
    if cpu_only not in ("", "0", "false", "no", "off", "1", "true", "yes", "on"):
        raise ValueError(f"RCM_FSAD_CPU_ONLY must be 1/true/yes/on or 0/false/no/off, got {cpu_only!r}")
    if cpu_only in ("1", "true", "yes", "on"):
        return None
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(_toolkit_root_of(nvcc))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return root
    return None


def wheel_cuda_include_dirs() -> list[str]:
    """Headers shipped by torch's nvidia-* wheels (cusparse.h, cublas) that torch's CUDA headers need."""
    roots = site.getsitepackages() + [sysconfig.get_paths()["purelib"]]
    found: list[str] = []
    for root in roots:
        found += sorted(glob.glob(os.path.join(root, "nvidia", "cu[0-9]*", "include")))
    return list(dict.fromkeys(found))


def find_cuda_library(cuda_home: str, name: str) -> str | None:
    """lib<name>.so from the toolkit, else from torch's nvidia-* wheels (the toolkit here has no nvrtc)."""
    roots = [os.path.join(cuda_home, "lib64")] + [
        os.path.join(os.path.dirname(include), "lib") for include in wheel_cuda_include_dirs()
    ]
    for root in roots:
        matches = sorted(glob.glob(os.path.join(root, f"lib{name}.so*")))
        if matches:
            return matches[0]
    return None
