"""What was built and what this process can run."""
from __future__ import annotations

from typing import Any, Dict

import torch

from rcm_fsad_ops import _C

OPS = ("deform_conv2d", "deform_conv2d_backward")


def _has_kernel(op: str, dispatch_key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"rcm_fsad::{op}", dispatch_key)


def info() -> Dict[str, Any]:
    """Package and torch versions, compiled backends and CUDA arch list, the visible GPUs' archs, whether
    the current GPU runs the wgmma kernel, registered kernels, threads, whether the CPU kernels use them,
    which build of their hot loops runs, whether their bfloat16 forwards multiply in bfloat16, and the
    counters of their weight cache."""
    from rcm_fsad_ops import __version__

    built_with_cuda = bool(_C.built_with_cuda)
    return {
        "rcm_fsad_ops": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "backends": ["CPU"] + (["CUDA"] if built_with_cuda else []),
        "cuda_arch_list": _C.cuda_arch_list.split(";") if built_with_cuda else [],
        "cuda_available": torch.cuda.is_available(),
        # each visible GPU's arch, to read against cuda_arch_list (a missing one runs only from PTX, if any)
        "gpu_archs": [f"{major}.{minor}" for major, minor in
                      (torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))],
        # whether RCM_FSAD_DEFORM_CONV_ALGO=implicit_gemm_wgmma takes the wgmma kernel on the current GPU (its
        # sm_90a code loaded, RCM_FSAD_DISABLE_WGMMA not 1), or falls back to the default path
        "wgmma": bool(_C.wgmma_runs()) if built_with_cuda and torch.cuda.is_available() else False,
        "kernels": {op: [key for key in ("CPU", "CUDA", "Autograd", "AutocastCPU", "AutocastCUDA") if _has_kernel(op, key)]
                    for op in OPS},
        "threads": torch.get_num_threads(),
        # the CPU kernels' at::parallel_for runs on those threads (built with OpenMP), or serially
        "cpu_parallel": bool(_C.intra_op_parallel),
        # the build of the CPU hot loops that runs: avx2+fma, or default (RCM_FSAD_CPU_CAPABILITY=default)
        "cpu_capability": _C.cpu_capability(),
        # a bfloat16 forward's GEMMs in bfloat16 (the CPU has AVX512-BF16, torch.backends.mkldnn is on), else float32
        "cpu_bfloat16_gemms": bool(_C.cpu_bfloat16_gemms()),
        # what runs the float32 GEMMs: onednn (torch.backends.mkldnn is on and torch has its linear ops) or blas
        "cpu_float32_gemms": _C.cpu_float32_gemms(),
        # the CPU forward's weight operands kept across calls (see clear_cpu_weight_cache): entries, bytes, hits,
        # builds and capacity (RCM_FSAD_CPU_WEIGHT_CACHE_BYTES)
        "cpu_weight_cache": _C.cpu_weight_cache(),
    }


def clear_cpu_weight_cache() -> None:
    """Drops the CPU forward's cached weight operands and zeroes the cache's counters.

    A CPU forward keeps the GEMM operands it makes of a weight (its matrix, oneDNN's packing) once it has seen
    that weight twice at the same version, and reuses them while the weight's bytes are those they were made
    from (a copy of the weight is compared on every call). That spares inference the preparation and its
    allocations; a weight that is trained is never kept. The cache holds at most RCM_FSAD_CPU_WEIGHT_CACHE_BYTES
    (256 MiB unless set; 0 turns it off), least recently used out first."""
    _C.clear_cpu_weight_cache()


def format_info(values: Dict[str, Any]) -> str:
    width = max(len(k) for k in values)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in values.items())
