"""What a benchmark run records of where it runs (benchmarks.runner): the machine, the commit, the
TF32 switches (set once per run, the same for every implementation), and the GPU ceilings its
roofline fractions are taken against."""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import warnings
from pathlib import Path
from typing import Dict, Iterator, Optional

import torch

# Ceilings for "% of roofline" on GPUs, keyed by a substring of torch.cuda.get_device_name().
# Roofline time = max(FLOPs / peak FLOP/s, minimum bytes / peak bandwidth); % = roofline time / measured.
GPU_CEILINGS: Dict[str, Dict[str, object]] = {
    "H200": {
        # SPEC section 7: measured on the project's H200 (the data sheet says 4.8 TB/s HBM3e).
        "bytes_per_s": 4.3e12,
        "flops_per_s": {
            # SPEC section 7: measured dense bf16 tensor-core rate (data sheet: 989 TFLOP/s dense).
            "bf16": 790e12,
            # Hopper runs fp16 and bf16 tensor-core MMA at the same rate; the SPEC's bf16 figure.
            "fp16": 790e12,
            # fp32 with TF32 off: CUDA-core FP32 from the NVIDIA H200 SXM data sheet (67 TFLOP/s).
            "fp32": 67e12,
            # fp32 with TF32 on: data sheet 494 TFLOP/s dense TF32, scaled by the measured/sheet
            # ratio of bf16 (790 / 989): about 395 TFLOP/s. Not measured here.
            "tf32": 395e12,
            # fp64: data sheet FP64 tensor core 67 TFLOP/s (34 TFLOP/s on CUDA cores).
            "fp64": 67e12,
        },
        "source": "SPEC section 7 (4.3 TB/s, 790 TFLOP/s dense bf16) + NVIDIA H200 SXM data sheet",
    },
    "H100": {
        # NVIDIA H100 SXM data sheet (not measured here): 3.35 TB/s, 989 TFLOP/s dense bf16/fp16,
        # 67 TFLOP/s fp32, 494 TFLOP/s dense tf32, 67 TFLOP/s fp64 tensor core.
        "bytes_per_s": 3.35e12,
        "flops_per_s": {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12, "tf32": 494e12, "fp64": 67e12},
        "source": "NVIDIA H100 SXM data sheet (not measured)",
    },
}


def _set_tf32(matmul: bool, cudnn: bool) -> None:
    with warnings.catch_warnings():  # the legacy API, valid from torch 2.4 on
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


@contextlib.contextmanager
def tf32_set_to(enabled: bool) -> Iterator[Dict[str, bool]]:
    """Both TF32 switches set to `enabled` within the block, as they were after it. Yields their values."""
    before = tf32_state()
    _set_tf32(enabled, enabled)
    try:
        yield tf32_state()
    finally:
        _set_tf32(before["torch.backends.cuda.matmul.allow_tf32"], before["torch.backends.cudnn.allow_tf32"])


def tf32_state() -> Dict[str, bool]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "torch.backends.cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "torch.backends.cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# The commit the tree was taken from, when the caller knows better than the tree's own .git: a GPU
# machine gets a copy of the working tree whose git metadata may be stale (gpu_check.sh).
GIT_REVISION_ENV = "RCM_FSAD_GIT_REVISION"


def _git_revision() -> Optional[str]:
    if os.environ.get(GIT_REVISION_ENV):
        return os.environ[GIT_REVISION_ENV]
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "git": _git_revision(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except Exception as exc:  # noqa: BLE001
        info["torchvision"] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        import rcm_fsad_ops

        info["rcm_fsad_ops"] = rcm_fsad_ops.__version__
        try:
            built = rcm_fsad_ops.info()
            info["rcm_fsad_ops_backends"] = built.get("backends")
            info["rcm_fsad_ops_cuda_arch_list"] = built.get("cuda_arch_list")
            info["rcm_fsad_ops_wgmma"] = built.get("wgmma")
        except Exception:  # noqa: BLE001
            pass
    except Exception as exc:  # noqa: BLE001
        info["rcm_fsad_ops"] = f"unavailable ({type(exc).__name__}: {exc})"
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info["gpu_name"] = props.name
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_sm_count"] = props.multi_processor_count
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def gpu_ceilings(gpu_name: Optional[str]) -> Optional[Dict[str, object]]:
    if not gpu_name:
        return None
    for key, ceilings in GPU_CEILINGS.items():
        if key.lower() in gpu_name.lower():
            return dict(ceilings, key=key)
    return None
