"""Side-by-side benchmark of deform_conv2d: ours vs torchvision vs the eager reference (SPEC section 7), on the
CPU also vs onnxruntime's DeformConv, with a dense conv2d of the same shape as the yardstick of what the
sampling costs.

Everything runs in one process on the same inputs: for each device, case and dtype, each
implementation is first checked against torchvision (max abs difference of the output, and for the
forward+backward pass of the output and all gradients, and the largest difference relative to the
largest value of its tensor; reported, never fatal), then timed:

  forward          ``fn(...)`` under ``torch.no_grad()``
  forward+backward ``fn(...).backward(grad_output)`` with input, offset, weight, mask and bias all
                   requiring grad (their ``.grad`` is reset to None outside the timed region)

Timing: every implementation is warmed up (a few calls, at least a short wall time), then their timed
calls are interleaved, in TIMING_ROUNDS rounds of a share of each, so that a drift in the machine's
speed weighs on all alike; the reported time is the median. CPU: ``time.perf_counter`` per call
(caches not flushed), each slice after a pause that lets the threads of the implementation before it stop
spinning (CPU_SETTLE_S). CUDA: a pair of ``torch.cuda.Event`` around each call, the calls queued back to
back with no synchronisation between them, each after a write of CUDA_L2_FLUSH_BYTES that evicts the
last call's data from L2 (the method of ``triton.testing.do_bench``): a time is the device's, with the
host's work for a call hidden behind the flush before it (where it takes less than the flush, about
70 us on an H200), as a model's stream of calls hides it, and no call reads its inputs from the L2 the
one before left.

The TF32 switches (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``) are
set once per run, so they are the same for every implementation; default off, so fp32 means float32's
accuracy: IEEE fp32 for torchvision's GEMM, and for ``ours`` on CUDA the mma.sync kernel on operands split
in two TF32 parts (three TF32 MMAs a product, its error tested against float32's).

On CUDA, ``ours`` is the default forward path (in tensor-core types the mma.sync kernel, its sampled
operand in registers, where it applies; in fp32 with TF32 off the same on split operands), and
``ours[implicit_gemm_wgmma]`` (Hopper's wgmma, on sm_90 with the build's sm_90a code; fp32 split as ours),
``ours[implicit_gemm_wmma]`` (the WMMA kernel with cp.async copies), ``ours[implicit_gemm_sync]`` (the
WMMA kernel without them), ``ours[implicit_gemm_simt]`` and ``ours[columns]`` (forward only) are the
other five, so
the tensor-core, CUDA-core and columns paths sit side by side, with ``ours[autotune]`` (forward only),
the fastest of them as timed on its first call; ``ours[deterministic]`` times forward+backward under
``torch.use_deterministic_algorithms(True)``.

On every device ``ours[channels_last]`` runs what ``ours`` runs on channels_last input, offset, mask,
weight and grad_output (what a model converted by ``model.to(memory_format=torch.channels_last)`` hands
it), where the op converts no layout: on contiguous NCHW tensors it converts the input and grad_output to
NHWC and the output and input gradient back, reads offset and mask across their planes, and reorders the
weight into its GEMMs' layout and the weight gradient back.

``dense conv2d`` is ``torch.nn.functional.conv2d`` with the same input, weight, bias and hyper-parameters,
no offsets and no mask (the backend's own convolution: cuDNN, or oneDNN/MKL on the CPU): the same
FLOPs without the sampling, so ours' time over its time is what the deformation costs. It is not a
deformable convolution, so it has no parity check and stays out of the geometric means and goals.

``onnxruntime`` (CPU, where onnxruntime and onnxscript are installed) is onnxruntime's DeformConv kernel
running the op as ``torch.onnx.export`` exports it (rcm_fsad_ops.onnx), with the weight and bias as
initializers, on as many intra-op threads as torch has, its other session options the defaults: what a
model exported to ONNX runs on. It is an inference engine, so it has forward rows only, and none in
bfloat16, which its CPU kernel lacks; ours' rows report their speed-up over it.

torchvision's deform_conv2d may lack a kernel for a dtype (bf16, say). Then it runs the way a user
would get it: under ``torch.autocast`` in that dtype, where torchvision upcasts to fp32 and casts the
result back (CUDA; the row's note says "autocast->fp32"), or, where autocast has no policy for it either
(the CPU), on the arguments cast to fp32 by hand, its results cast back ("cast->fp32").
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch

from benchmarks.shapes import (
    DTYPE_NAMES,
    EXTRA_CASES,
    FWD,
    FWD_BWD,
    PASSES,
    Case,
    cases_for,
    dtype_of,
)

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"
EXTRA_CASE_NAMES = {case.name for case in EXTRA_CASES}

OURS = "ours"
OURS_WGMMA = "ours[implicit_gemm_wgmma]"
OURS_WMMA = "ours[implicit_gemm_wmma]"
OURS_SYNC = "ours[implicit_gemm_sync]"
OURS_SIMT = "ours[implicit_gemm_simt]"
OURS_COLUMNS = "ours[columns]"
OURS_AUTOTUNE = "ours[autotune]"
OURS_CHANNELS_LAST = "ours[channels_last]"
OURS_DETERMINISTIC = "ours[deterministic]"
TORCHVISION = "torchvision"
ONNXRUNTIME = "onnxruntime"
REFERENCE = "reference"
COMPILED = "reference+compile"
DENSE = "dense conv2d"
IMPL_ORDER = (OURS, OURS_CHANNELS_LAST, OURS_WGMMA, OURS_WMMA, OURS_SYNC, OURS_SIMT, OURS_COLUMNS, OURS_AUTOTUNE,
              OURS_DETERMINISTIC, TORCHVISION, ONNXRUNTIME, REFERENCE, COMPILED, DENSE)
ALGORITHM_ENV = "RCM_FSAD_DEFORM_CONV_ALGO"


class Variant(NamedTuple):
    """Another path of ours: the forward algorithm (ALGORITHM_ENV, read by the CUDA forward at each
    call; None: the default), torch.use_deterministic_algorithms (and its warn_only), the passes it
    changes, and whether it takes its tensors channels_last (_in_layout)."""
    algorithm: Optional[str]
    deterministic: bool
    passes: Tuple[str, ...]
    warn_only: bool = False
    channels_last: bool = False


# On CUDA these run beside the default path: the other forward algorithms (forward only: the
# backward is the same for all) and the deterministic backward (forward+backward).
CUDA_VARIANTS = {
    OURS_CHANNELS_LAST: Variant(None, False, PASSES, channels_last=True),  # with the caller's settings: variant_of
    OURS_WGMMA: Variant("implicit_gemm_wgmma", False, (FWD,)),
    OURS_WMMA: Variant("implicit_gemm_wmma", False, (FWD,)),
    OURS_SYNC: Variant("implicit_gemm_sync", False, (FWD,)),
    OURS_SIMT: Variant("implicit_gemm_simt", False, (FWD,)),
    OURS_COLUMNS: Variant("columns", False, (FWD,)),
    OURS_AUTOTUNE: Variant("autotune", False, (FWD,)),
    OURS_DETERMINISTIC: Variant(None, True, (FWD_BWD,)),
}
# The variants that differ from ``ours`` only where it takes tensor cores. In fp64 they run the CUDA-core
# kernel that ``ours`` runs. In fp32 with TF32 off ``ours`` splits its operands over TF32 tensor cores and
# implicit_gemm_simt is the CUDA-core kernel, while the WMMA variants, which do not split, run that same
# CUDA-core kernel. Those are not timed again under another name. (The wgmma one splits as ours does.)
TENSOR_CORE_VARIANTS = (OURS_WGMMA, OURS_WMMA, OURS_SYNC, OURS_SIMT)


def variant_of(impl: str, default: Variant) -> Variant:
    """What impl runs under: a CUDA variant's own settings, but ours[channels_last] the caller's (``default``,
    as ours) on channels_last tensors, so that it differs from ours in the layout alone; anything else the
    caller's."""
    if impl == OURS_CHANNELS_LAST:
        return default._replace(channels_last=True)
    if impl == ONNXRUNTIME:  # inference only
        return default._replace(passes=(FWD,))
    return CUDA_VARIANTS.get(impl, default)


def variant_applies(impl: str, dtype_name: str, tf32_matmul: bool) -> bool:
    """Whether timing ``impl`` in this dtype measures a kernel of its own (see TENSOR_CORE_VARIANTS)."""
    if impl not in TENSOR_CORE_VARIANTS or dtype_name in ("fp16", "bf16"):
        return True
    return dtype_name == "fp32" and (tf32_matmul or impl in (OURS_WGMMA, OURS_SIMT))


def variant_skip_reason(impl: str, dtype_name: str) -> str:
    """Why ``impl`` is not timed in this dtype (variant_applies is false): the kernel it would time."""
    if dtype_name == "fp32":
        return f"no WMMA kernel in fp32 without TF32: the CUDA-core kernel of {OURS_SIMT}"
    return "no tensor cores in this dtype: the CUDA-core kernel of ours"

# The eager reference materialises several N * C_in * kh*kw * H_out*W_out intermediates (and keeps
# them for backward); above this many elements per intermediate it is skipped.
REFERENCE_MAX_ELEMENTS = 64 * 1024 * 1024

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


# ---------------------------------------------------------------------------------------------------
# settings


class TimingSettings:
    def __init__(self, warmup: int, warmup_s: float, min_repeats: int, max_repeats: int, target_s: float):
        self.warmup = warmup
        self.warmup_s = warmup_s
        self.min_repeats = min_repeats
        self.max_repeats = max_repeats
        self.target_s = target_s

    def as_dict(self) -> dict:
        return dict(vars(self))


def timing_settings(device_type: str, quick: bool) -> TimingSettings:
    if quick:
        return TimingSettings(warmup=1, warmup_s=0.0, min_repeats=2, max_repeats=3, target_s=0.0)
    if device_type == "cuda":
        return TimingSettings(warmup=5, warmup_s=0.1, min_repeats=10, max_repeats=100, target_s=0.5)
    return TimingSettings(warmup=2, warmup_s=0.2, min_repeats=5, max_repeats=30, target_s=2.0)


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


# ---------------------------------------------------------------------------------------------------
# machine description


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


# ---------------------------------------------------------------------------------------------------
# implementations


def _ours() -> Callable:
    import rcm_fsad_ops

    return rcm_fsad_ops.deform_conv2d


def _wgmma_runs() -> bool:
    """Whether ours[implicit_gemm_wgmma] runs the wgmma kernel here (else it would time ours' default path
    under another name)."""
    import rcm_fsad_ops

    return rcm_fsad_ops.info()["wgmma"]


def _torchvision(mode: str) -> Callable:
    import torchvision.ops

    native = torchvision.ops.deform_conv2d
    if mode == "native":
        return native
    if mode == "cast":
        def via_float32(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
            def cast(t):
                return None if t is None else t.float()

            return native(cast(input), cast(offset), cast(weight), bias=cast(bias), stride=stride, padding=padding,
                          dilation=dilation, mask=cast(mask)).to(input.dtype)

        return via_float32

    def via_autocast(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
        with torch.autocast(device_type=input.device.type, dtype=input.dtype):
            return native(input, offset, weight, bias=bias, stride=stride, padding=padding,
                          dilation=dilation, mask=mask)

    return via_autocast


def compared_impls(device_type: str) -> List[str]:
    """The implementations every run compares: ours and ours[channels_last], on CUDA also its other paths
    (CUDA_VARIANTS), and torchvision. Returns their names in table order."""
    variants = list(CUDA_VARIANTS) if device_type == "cuda" else [OURS_CHANNELS_LAST]
    return [OURS] + variants + [TORCHVISION]


def current_variant() -> Variant:
    """The forward algorithm and determinism in force now, with every pass: what ``ours`` (and every
    implementation that is not a CUDA variant) runs under, and what is restored after the variants."""
    return Variant(os.environ.get(ALGORITHM_ENV), torch.are_deterministic_algorithms_enabled(), PASSES,
                   torch.is_deterministic_algorithms_warn_only_enabled())


def _select(variant: Variant) -> None:
    """The variant's CUDA forward algorithm (None: the default) and torch's determinism for the calls
    that follow."""
    if variant.algorithm is None:
        os.environ.pop(ALGORITHM_ENV, None)
    else:
        os.environ[ALGORITHM_ENV] = variant.algorithm
    if variant.deterministic:  # what PyTorch versions that check cuBLAS's determinism ask for
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(variant.deterministic, warn_only=variant.warn_only)


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def pick_torchvision(tensors: Dict[str, torch.Tensor], case: "Case") -> Tuple[Callable, str, Dict[str, torch.Tensor]]:
    """torchvision's deform_conv2d in the inputs' dtype, or under autocast when it has no kernel for it, or
    on the inputs cast to float32 when autocast has no policy for it either.

    Returns (fn, note, results of one forward+backward); raises when neither way runs.
    """
    errors = []
    for mode, note in (("native", ""), ("autocast", "autocast->fp32"), ("cast", "cast->fp32")):
        try:
            fn = _torchvision(mode)
            return fn, note, _evaluate(fn, tensors, case)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{mode}: {_error_text(exc)}")
    raise RuntimeError("torchvision.ops.deform_conv2d failed (" + "; ".join(errors) + ")")


def _reference() -> Callable:
    from rcm_fsad_ops.reference import deform_conv2d

    return deform_conv2d


def _dense_conv2d() -> Callable:
    """conv2d with deform_conv2d's signature: the offsets and the mask are ignored."""

    def dense(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
        return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation,
                                          groups=input.shape[1] // weight.shape[1])

    return dense


# The dtypes of onnxruntime's CPU DeformConv kernel (not bfloat16).
ONNXRUNTIME_DTYPES = ("fp16", "fp32", "fp64")


def _onnxruntime(tensors: Dict[str, torch.Tensor], case: Case) -> Callable:
    """onnxruntime's DeformConv on the CPU, forward only: the op exported by torch.onnx.export with this
    case's weight and bias as the graph's initializers (as in an exported model), run on as many threads
    as torch's. Returns deform_conv2d's signature; the weight, bias and hyper-parameters it is given are
    those it was exported with."""
    import onnxruntime

    from rcm_fsad_ops.nn import ModulatedDeformConv2d

    weight = tensors["weight"]
    layer = ModulatedDeformConv2d(case.c_in, case.out_channels, case.kernel, groups=case.groups,
                                  bias="bias" in tensors, dtype=weight.dtype, **case.kwargs()).eval()
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is not None:
            layer.bias.copy_(tensors["bias"])
    names = [name for name in ("input", "offset", "mask") if name in tensors]
    program = torch.onnx.export(layer, tuple(tensors[name].detach() for name in names), dynamo=True, verbose=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    graph_inputs = [arg.name for arg in session.get_inputs()]

    def run(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
        arrays = [t.numpy() for t in (input, offset, mask) if t is not None]
        return torch.from_numpy(session.run(None, dict(zip(graph_inputs, arrays)))[0])

    return run


def _compiled_reference() -> Callable:
    import torch._dynamo

    torch._dynamo.reset()  # a fresh cache per case and dtype: no recompile limits, no stale graphs
    return torch.compile(_reference(), dynamic=False)


LEAF_NAMES = ("input", "offset", "weight", "mask", "bias")


def _leaves(tensors: Dict[str, torch.Tensor], requires_grad: bool) -> Dict[str, torch.Tensor]:
    leaves = {}
    for name in LEAF_NAMES:
        if name in tensors:
            leaf = tensors[name].detach()
            leaves[name] = leaf.requires_grad_(True) if requires_grad else leaf
    return leaves


def _in_layout(tensors: Dict[str, torch.Tensor], variant: Variant) -> Dict[str, torch.Tensor]:
    """The tensors a variant runs on: channels_last copies of the 4-D ones (input, offset, mask, weight,
    grad_output: what a channels_last model passes) where it asks for them."""
    if not variant.channels_last:
        return tensors
    four_d = ("input", "offset", "mask", "weight", "grad_output")
    return {name: t.contiguous(memory_format=torch.channels_last) if name in four_d else t
            for name, t in tensors.items()}


def _call(fn: Callable, leaves: Dict[str, torch.Tensor], case: Case) -> torch.Tensor:
    return fn(leaves["input"], leaves["offset"], leaves["weight"], bias=leaves.get("bias"),
              mask=leaves.get("mask"), **case.kwargs())


def _evaluate(fn: Callable, tensors: Dict[str, torch.Tensor], case: Case) -> Dict[str, torch.Tensor]:
    """Output and every gradient of one forward+backward."""
    leaves = _leaves(tensors, requires_grad=True)
    out = _call(fn, leaves, case)
    out.backward(tensors["grad_output"])
    results = {"output": out.detach()}
    for name, leaf in leaves.items():
        results[f"grad_{name}"] = leaf.grad
    return results


def _differences(ours: Dict[str, torch.Tensor], theirs: Dict[str, torch.Tensor]) -> Dict[str, dict]:
    diffs = {}
    for key, expected in theirs.items():
        got = ours.get(key)
        if got is None or expected is None:
            continue
        expected32 = expected.detach().double()
        delta = (got.detach().double() - expected32).abs()
        max_abs = float(delta.max()) if delta.numel() else 0.0
        scale = float(expected32.abs().max()) if expected32.numel() else 0.0
        diffs[key] = {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs}
    return diffs


def _summarise_diff(diffs: Dict[str, dict], pass_name: str) -> Tuple[Optional[float], Optional[float]]:
    keys = ["output"] if pass_name == FWD else list(diffs)
    values = [diffs[key] for key in keys if key in diffs]
    if not values:
        return None, None
    return max(v["max_abs"] for v in values), max(v["max_rel"] for v in values)


# ---------------------------------------------------------------------------------------------------
# timing


def _make_step(fn: Callable, tensors: Dict[str, torch.Tensor], case: Case, pass_name: str):
    """(prepare, step): prepare runs outside the timed region, step is what is timed."""
    if pass_name == FWD:
        leaves = _leaves(tensors, requires_grad=False)

        def step():
            with torch.no_grad():
                _call(fn, leaves, case)

        return (lambda: None), step

    leaves = _leaves(tensors, requires_grad=True)
    grad_output = tensors["grad_output"]

    def prepare():
        for leaf in leaves.values():
            leaf.grad = None

    def step():
        _call(fn, leaves, case).backward(grad_output)

    return prepare, step


# Larger than any GPU's L2 (H200: 60 MB): what the CUDA timing writes before each call (triton's do_bench
# writes as much).
CUDA_L2_FLUSH_BYTES = 256 << 20


# The timed calls of every implementation are spread over this many rounds, each of which times a share
# of every implementation's calls in turn: a drift of the machine's speed (the 2-core host's reaches a
# third between runs) then weighs on every implementation alike instead of on whichever ran during it.
TIMING_ROUNDS = 5


# On the CPU an engine's idle threads spin for a while after its last call (OpenMP's, and onnxruntime's by
# default) and slow whatever runs next on the same cores: on 2 cores ours' first forward right after
# onnxruntime's took 2.2x its time, and onnxruntime's right after ours 1.4x. So each slice of timed calls
# starts after this pause, as it would in a program that runs one of them.
CPU_SETTLE_S = 0.05


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_share(repeats: int, round_index: int) -> int:
    """The calls of `repeats` timed in round `round_index` of TIMING_ROUNDS: spread evenly."""
    return (repeats * (round_index + 1)) // TIMING_ROUNDS - (repeats * round_index) // TIMING_ROUNDS


class _Timing:
    """The timing of one (implementation, pass): the first call on its own (for the compiled reference it
    includes compilation), a warm-up, then timed calls in slices (``time_calls``), as TIMING_ROUNDS asks."""

    def __init__(self, prepare: Callable, step: Callable, device: torch.device, settings: TimingSettings):
        self.prepare, self.step, self.device = prepare, step, device
        self.times_ms: List[float] = []
        prepare()
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        self.first_ms = (time.perf_counter() - start) * 1e3

        self.warmup = 0
        warm_start = time.perf_counter()
        while self.warmup < settings.warmup or (time.perf_counter() - warm_start < settings.warmup_s
                                                and self.warmup < 10 * max(settings.warmup, 1)):
            prepare()
            step()
            _sync(device)
            self.warmup += 1
        per_call_s = (time.perf_counter() - warm_start) / self.warmup if self.warmup else self.first_ms / 1e3
        repeats = settings.min_repeats
        if per_call_s > 0 and settings.target_s > 0:
            repeats = int(settings.target_s / per_call_s)
        self.repeats = max(settings.min_repeats, min(settings.max_repeats, repeats))

    def time_calls(self, count: int) -> None:
        """Times `count` more calls. CPU: perf_counter around each, after a pause of CPU_SETTLE_S. CUDA: an
        event pair around each, the calls queued back to back, each after a write of CUDA_L2_FLUSH_BYTES (see
        the module's docstring)."""
        if self.device.type != "cuda":
            time.sleep(CPU_SETTLE_S)
            for _ in range(count):
                self.prepare()
                t0 = time.perf_counter()
                self.step()
                self.times_ms.append((time.perf_counter() - t0) * 1e3)
            return
        flush = torch.empty(CUDA_L2_FLUSH_BYTES // 4, dtype=torch.int32, device=self.device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(count)]
        _sync(self.device)
        for begin, end in events:
            self.prepare()
            flush.zero_()
            begin.record()
            self.step()
            end.record()
        _sync(self.device)
        self.times_ms += [begin.elapsed_time(end) for begin, end in events]

    def summary(self) -> dict:
        times_ms = sorted(self.times_ms)
        quartiles = statistics.quantiles(times_ms, n=4) if len(times_ms) >= 2 else [times_ms[0]] * 3
        return {
            "median_ms": statistics.median(times_ms),
            "min_ms": times_ms[0],
            "max_ms": times_ms[-1],
            "iqr_ms": quartiles[2] - quartiles[0],
            "repeats": len(times_ms),
            "warmup": self.warmup,
            "first_call_ms": self.first_ms,
        }


# ---------------------------------------------------------------------------------------------------
# one device


def resolve_devices(devices) -> List[str]:
    """None / "all" -> every available device; "cpu" / "cuda" / "cuda:1" / lists of those.

    A CUDA device asked for on a machine without one is dropped with a message when other devices
    remain (so ``run(["cpu", "cuda"])`` works everywhere); asked for alone, it is an error.
    """
    if devices is None:
        devices = ["all"]
    if isinstance(devices, str):
        devices = [devices]
    resolved: List[str] = []
    missing: List[str] = []
    for device in devices:
        names = ["cpu", "cuda"] if device == "all" else [device]
        for name in names:
            kind = torch.device(name).type
            if kind not in ("cpu", "cuda"):
                raise ValueError(f"unsupported device {name!r} (expected cpu, cuda or all)")
            if kind == "cuda" and not torch.cuda.is_available():
                if device != "all":
                    missing.append(name)
                continue
            if name not in resolved:
                resolved.append(name)
    if missing:
        message = f"{', '.join(missing)} asked for, but torch.cuda.is_available() is False"
        if not resolved:
            raise RuntimeError(message)
        _log(f"# skipping {message}")
    return resolved


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec) + suffix


def _fmt_rate(value: Optional[float]) -> str:
    """Throughput with about three significant digits, without exponents."""
    if value is None or not math.isfinite(value):
        return "–"
    for threshold, spec in ((100, ".0f"), (10, ".1f"), (1, ".2f")):
        if abs(value) >= threshold:
            return format(value, spec)
    return format(value, ".3f")


def _row_key(row: dict) -> tuple:
    return (row["case"], row["dtype"], row["pass"])


def _finish_rows(rows: List[dict], ceilings: Optional[dict]) -> None:
    """Fill in speed-ups vs torchvision, times over the dense conv2d's, throughput and roofline fractions."""
    def times_of(impl: str) -> Dict[tuple, float]:
        return {_row_key(r): r["median_ms"] for r in rows if r["impl"] == impl and r["status"] == "ok"}

    tv_time, ort_time, dense_time = times_of(TORCHVISION), times_of(ONNXRUNTIME), times_of(DENSE)
    for row in rows:
        if row["status"] != "ok":
            continue
        seconds = row["median_ms"] / 1e3
        row["gflops"] = row["flops"] / seconds / 1e9
        row["gbps"] = row["min_bytes"] / seconds / 1e9
        base = tv_time.get(_row_key(row))
        row["speedup_vs_torchvision"] = base / row["median_ms"] if base else None
        ort = ort_time.get(_row_key(row))
        row["speedup_vs_onnxruntime"] = ort / row["median_ms"] if ort else None
        dense = dense_time.get(_row_key(row))
        row["time_vs_dense"] = row["median_ms"] / dense if dense else None
        row["roofline_pct"] = None
        row["roofline_bound"] = None
        if ceilings:
            rate_key = row["dtype"]
            if rate_key == "fp32" and row["tf32"]["torch.backends.cuda.matmul.allow_tf32"]:
                rate_key = "tf32"
            peak_flops = ceilings["flops_per_s"].get(rate_key)
            peak_bw = ceilings["bytes_per_s"]
            if peak_flops:
                compute_s = row["flops"] / peak_flops
                memory_s = row["min_bytes"] / peak_bw
                row["roofline_pct"] = 100.0 * max(compute_s, memory_s) / seconds
                row["roofline_bound"] = "compute" if compute_s >= memory_s else "memory"


def geomean_speedups(rows: List[dict]) -> List[dict]:
    """Geometric mean over cases of the speed-up vs torchvision, per device/dtype/pass/impl; the rows of
    shapes.EXTRA_CASES stand alone."""
    groups: Dict[tuple, List[float]] = {}
    for row in rows:
        speedup = row.get("speedup_vs_torchvision")
        if (row["status"] != "ok" or row["impl"] in (TORCHVISION, DENSE) or not speedup
                or row["case"] in EXTRA_CASE_NAMES):
            continue
        groups.setdefault((row["device"], row["dtype"], row["pass"], row["impl"]), []).append(speedup)
    out = []
    for (device, dtype, pass_name, impl), values in groups.items():
        out.append({
            "device": device, "dtype": dtype, "pass": pass_name, "impl": impl, "cases": len(values),
            "geomean_speedup_vs_torchvision": math.exp(sum(math.log(v) for v in values) / len(values)),
        })
    order = {name: i for i, name in enumerate(IMPL_ORDER)}
    out.sort(key=lambda g: (g["device"], g["dtype"], order.get(g["impl"], 9), PASSES.index(g["pass"])))
    return out


def markdown_ours_column(rows: List[dict], field: str, heading: str) -> str:
    """One value of ours' rows (``field``: time_vs_dense, what the sampling costs, or speedup_vs_onnxruntime)
    per case, dtype and pass, under ``heading``."""
    values = [r for r in rows if r["impl"] == OURS and r["status"] == "ok" and r.get(field)]
    if not values:
        return "(none: no rows of both)"
    lines = [f"| case | dtype | pass | {heading} |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['dtype']} | {r['pass']} | {r[field]:.2f}× |" for r in values]
    return "\n".join(lines)


def _diff_text(row: dict) -> str:
    """The row's largest difference from torchvision, absolute and relative: "4.0e+00 (3.1e-03)"."""
    max_abs, max_rel = row.get("max_abs_diff_vs_torchvision"), row.get("max_rel_diff_vs_torchvision")
    if max_abs is None:
        return "–"
    return f"{max_abs:.1e}" + ("" if max_rel is None else f" ({max_rel:.1e})")


def markdown_table(rows: List[dict], gpu: bool) -> str:
    header = ["case", "dtype", "pass", "impl", "median ms", "vs torchvision", "GFLOP/s", "GB/s"]
    if gpu:
        header.append("% roofline")
    header.append("max abs (rel.) diff vs tv")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        impl = row["impl"] + (f" ({row['impl_note']})" if row.get("impl_note") else "")
        if row["status"] != "ok":
            cells = [row["case"], row["dtype"], row["pass"], impl, row["status"], "–", "–", "–"]
            if gpu:
                cells.append("–")
            cells.append("–")
        else:
            diff = "–" if row["impl"] == TORCHVISION else _diff_text(row)
            cells = [row["case"], row["dtype"], row["pass"], impl, _fmt(row["median_ms"], ".3f"),
                     _fmt(row.get("speedup_vs_torchvision"), ".2f", "×"), _fmt_rate(row.get("gflops")),
                     _fmt_rate(row.get("gbps"))]
            if gpu:
                bound = row.get("roofline_bound")
                pct = row.get("roofline_pct")
                cells.append(("–" if pct is None else _fmt_rate(pct) + "%") + (f" ({bound[0]})" if bound else ""))
            cells.append(diff)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_geomeans(geomeans: List[dict]) -> str:
    if not geomeans:
        return "(none: no torchvision rows of the stage shapes; an extra case has its speed-ups in its rows)"
    lines = ["| dtype | pass | impl | cases | geomean speed-up vs torchvision |", "|---|---|---|---|---|"]
    for g in geomeans:
        lines.append(f"| {g['dtype']} | {g['pass']} | {g['impl']} | {g['cases']} | "
                     f"{g['geomean_speedup_vs_torchvision']:.2f}× |")
    return "\n".join(lines)


def markdown_report(result: dict) -> str:
    meta = result["meta"]
    machine = meta["machine"]
    gpu = meta["device_type"] == "cuda"
    tf32 = ", ".join(f"{k}={v}" for k, v in meta["tf32"].items())
    where = machine.get("gpu_name") if gpu else f"{machine['cpu_model']} ({machine['torch_threads']} threads)"
    lines = [
        f"## deform_conv2d on {meta['device']} — {where}",
        "",
        f"- date {meta['date']}, torch {machine['torch']}, torchvision {machine.get('torchvision')}, "
        f"rcm_fsad_ops {machine.get('rcm_fsad_ops')} (git {machine.get('git')})",
        f"- platform {machine['platform']}, CPU {machine['cpu_model']}, {machine['cpu_count']} CPUs, "
        f"torch threads {machine['torch_threads']}",
        f"- TF32: {tf32} (same for every implementation)",
        f"- timing: {meta['timing']['method']}; median of repeats after warm-up ({meta['timing']['settings']})"
        + ("; QUICK run (tiny repeats, numbers are rough)" if meta["quick"] else ""),
        "- cost model: FLOPs = 2·N·H_out·W_out·C_out·(C_in/groups)·kh·kw (fwd), 3× that (fwd+bwd); GB/s from "
        "minimum bytes (one read of input, offset, mask, weight, bias + one write of output; fwd+bwd adds one "
        "read of grad_output and the operands and one write of each gradient)",
    ]
    if gpu:
        lines.append(f"- ours: {ALGORITHM_ENV}={meta.get('forward_algorithm') or '(unset: the default path)'} "
                     f"(as the caller's environment set it)")
        ceilings = meta.get("ceilings")
        if ceilings:
            lines.append(f"- roofline ceilings ({ceilings['key']}): {ceilings['bytes_per_s'] / 1e12:.2f} TB/s, "
                         + ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in ceilings["flops_per_s"].items())
                         + f" — {ceilings['source']}; (c)=compute-bound, (m)=memory-bound")
        else:
            lines.append("- roofline: no ceilings known for this GPU")
    for name, case_desc in meta["cases"].items():
        lines.append(f"- {name}: {case_desc}")
    lines += ["", markdown_table(result["rows"], gpu), "", "Geometric-mean speed-up vs torchvision over cases:",
              "", markdown_geomeans(result["geomean"]), "",
              "Ours' time over a dense conv2d's of the same shape (1.00× would be a sampling that costs nothing):",
              "", markdown_ours_column(result["rows"], "time_vs_dense", "ours / dense conv2d")]
    if ONNXRUNTIME in meta.get("impls", ()):
        lines += ["", "Ours' speed-up over onnxruntime's DeformConv (the op as torch.onnx.export exports it):", "",
                  markdown_ours_column(result["rows"], "speedup_vs_onnxruntime", "onnxruntime / ours")]
    from benchmarks.goals import goals_of, markdown as goals_markdown  # here: benchmarks.goals imports this module

    goals = goals_of(result, "this run")
    if goals:
        lines += ["", "Goals (`python -m benchmarks.goals`):", "", goals_markdown(goals)]
    notes = list(meta.get("notes", []))
    notes += [f"{s['case']} {s['dtype']} {s['impl']}: skipped — {s['reason']}" for s in result["skipped"]]
    notes += [f"{r['case']} {r['dtype']} {r['pass']} {r['impl']}: {r['error']}"
              for r in result["rows"] if r["status"] != "ok" and r.get("error")]
    notes += [f"{r['case']} {r['dtype']} {r['impl']}: parity check (forward+backward) failed: {r['parity_error']}"
              for r in result["rows"] if r["status"] == "ok" and r.get("parity_error")]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _write(result: dict, out_dir: Path, stem: str) -> Tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(json_path)
    md_path.write_text(markdown_report(result))
    return json_path, md_path


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and os.path.basename(argv[0]) == "__main__.py":  # python -m benchmarks, or python -m rcm_fsad_ops bench
        argv[0:1] = ["python", "-m", os.path.basename(os.path.dirname(argv[0]))]
    return " ".join(argv)


def _log(message: str) -> None:
    print(message, flush=True)


def _measure_case_dtype(device: torch.device, case: Case, dtype_name: str, impls: Sequence[str],
                        settings: TimingSettings, tf32: Dict[str, bool], skipped: List[dict]) -> List[dict]:
    dtype = dtype_of(dtype_name)
    tensors = case.make_inputs(str(device), dtype)
    is_cuda = device.type == "cuda"
    rows: List[dict] = []

    def base_row(impl: str, pass_name: str, note: str = "") -> dict:
        element_size = torch.empty((), dtype=dtype).element_size()
        return {
            "device": str(device), "device_type": device.type, "case": case.name, "dtype": dtype_name,
            "pass": pass_name, "impl": impl, "impl_note": note, "status": "ok", "error": None,
            "flops": case.flops(pass_name), "min_bytes": case.min_bytes(pass_name, element_size),
            "tf32": tf32, "threads": torch.get_num_threads(),
        }

    def add_error_rows(impl: str, exc: BaseException) -> None:
        for pass_name in PASSES:
            row = base_row(impl, pass_name)
            row.update(status="error", error=_error_text(exc))
            rows.append(row)

    # Resolve the callables; torchvision first, since it is the yardstick of the parity check.
    functions: Dict[str, Tuple[Callable, str]] = {}
    first_fwd_bwd_ms: Dict[str, float] = {}  # the parity call: the first forward+backward of each impl
    expected = None
    if TORCHVISION in impls:
        try:
            t0 = time.perf_counter()
            fn, note, expected = pick_torchvision(tensors, case)
            first_fwd_bwd_ms[TORCHVISION] = (time.perf_counter() - t0) * 1e3
            functions[TORCHVISION] = (fn, note)
        except Exception as exc:  # noqa: BLE001
            add_error_rows(TORCHVISION, exc)
    for impl in impls:
        if impl == TORCHVISION:
            continue
        if not variant_applies(impl, dtype_name, tf32["torch.backends.cuda.matmul.allow_tf32"]):
            skipped.append({"case": case.name, "dtype": dtype_name, "impl": impl,
                            "reason": variant_skip_reason(impl, dtype_name)})
            continue
        if impl == OURS_WGMMA and not _wgmma_runs():
            skipped.append({"case": case.name, "dtype": dtype_name, "impl": impl,
                            "reason": "the wgmma kernel does not run here (rcm_fsad_ops.info()['wgmma']): "
                                      "the default path of ours"})
            continue
        if impl == ONNXRUNTIME and dtype_name not in ONNXRUNTIME_DTYPES:
            skipped.append({"case": case.name, "dtype": dtype_name, "impl": impl,
                            "reason": f"onnxruntime's CPU DeformConv runs {', '.join(ONNXRUNTIME_DTYPES)} only"})
            continue
        if impl in (REFERENCE, COMPILED) and case.reference_elements() > REFERENCE_MAX_ELEMENTS:
            reason = (f"eager reference needs N·C·kh·kw·H_out·W_out = {case.reference_elements() / 1e6:.0f}M "
                      f"elements per intermediate (limit {REFERENCE_MAX_ELEMENTS / 1e6:.0f}M)")
            skipped.append({"case": case.name, "dtype": dtype_name, "impl": impl, "reason": reason})
            continue
        try:
            if impl == OURS or impl in CUDA_VARIANTS:
                functions[impl] = (_ours(), "")
            elif impl == REFERENCE:
                functions[impl] = (_reference(), "")
            elif impl == COMPILED:
                functions[impl] = (_compiled_reference(), "")
            elif impl == DENSE:
                functions[impl] = (_dense_conv2d(), "")
            elif impl == ONNXRUNTIME:
                functions[impl] = (_onnxruntime(tensors, case), "")
        except Exception as exc:  # noqa: BLE001
            add_error_rows(impl, exc)

    default = current_variant()
    timings: List[Tuple[dict, Variant, _Timing]] = []  # (row, its variant, its timing), in IMPL_ORDER
    shared_bytes = torch.cuda.memory_allocated(device) if is_cuda else 0  # the inputs and the expected results
    for impl in IMPL_ORDER:
        if impl not in functions:
            continue
        variant = variant_of(impl, default)
        _select(variant)
        fn, note = functions[impl]
        try:
            inputs = _in_layout(tensors, variant)
        except Exception as exc:  # noqa: BLE001  (out of memory for the copies: this row fails, not the run)
            add_error_rows(impl, exc)
            continue
        diffs: Dict[str, dict] = {}
        parity_error = None
        if expected is not None and impl not in (TORCHVISION, DENSE):
            try:
                t0 = time.perf_counter()
                if impl == ONNXRUNTIME:  # an inference engine: no backward to check
                    with torch.no_grad():
                        evaluated = {"output": _call(fn, _leaves(inputs, requires_grad=False), case)}
                else:
                    evaluated = _evaluate(fn, inputs, case)
                    if is_cuda:
                        torch.cuda.synchronize(device)
                    first_fwd_bwd_ms[impl] = (time.perf_counter() - t0) * 1e3
                diffs = _differences(evaluated, expected)
                del evaluated
            except Exception as exc:  # noqa: BLE001
                parity_error = _error_text(exc)
                try:  # the forward alone may still run: compare what can be compared, time both passes
                    with torch.no_grad():
                        output = _call(fn, _leaves(inputs, requires_grad=False), case)
                    diffs = _differences({"output": output}, {"output": expected["output"]})
                    del output
                except Exception:  # noqa: BLE001
                    pass
        for pass_name in variant.passes:
            row = base_row(impl, pass_name, note)
            max_abs, max_rel = _summarise_diff(diffs, pass_name)
            row["max_abs_diff_vs_torchvision"] = max_abs
            row["max_rel_diff_vs_torchvision"] = max_rel
            row["first_fwd_bwd_call_ms"] = first_fwd_bwd_ms.get(impl)
            if pass_name == FWD_BWD:
                if parity_error:  # the forward+backward parity call failed; its max diff is forward-only
                    row["max_abs_diff_vs_torchvision"] = row["max_rel_diff_vs_torchvision"] = None
                    row["parity_error"] = parity_error
                elif diffs:
                    row["diff_detail"] = diffs
            try:
                if is_cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                    held_by_others = torch.cuda.memory_allocated(device) - shared_bytes
                timing = _Timing(*_make_step(fn, inputs, case, pass_name), device, settings)
                if is_cuda:  # the inputs and this implementation's own (not the other timings' tensors)
                    row["peak_memory_mib"] = (torch.cuda.max_memory_allocated(device) - held_by_others) / 2**20
                timings.append((row, variant, timing))
            except Exception as exc:  # noqa: BLE001
                row.update(status="error", error=_error_text(exc))
            rows.append(row)

    # Every implementation warmed up: their timed calls, in TIMING_ROUNDS rounds of a share of each.
    for round_index in range(TIMING_ROUNDS):
        for row, variant, timing in timings:
            if row["status"] != "ok":
                continue
            _select(variant)
            try:
                timing.time_calls(round_share(timing.repeats, round_index))
            except Exception as exc:  # noqa: BLE001
                row.update(status="error", error=_error_text(exc))
    for row, _, timing in timings:
        if row["status"] == "ok":
            row.update(timing.summary())
    del timings
    for row in rows:
        impl, pass_name = row["impl"], row["pass"]
        if row["status"] == "ok":
            extra = ""
            if impl == COMPILED:  # first calls include compilation (fwd+bwd compiles in the parity call)
                first = row["first_call_ms"] if pass_name == FWD else first_fwd_bwd_ms.get(impl, float("nan"))
                extra = f", first call incl. compile {first / 1e3:.1f} s"
            diff = "" if row["max_abs_diff_vs_torchvision"] is None else f", max|Δ| vs tv {_diff_text(row)}"
            _log(f"  {case.name:<16} {dtype_name:<5} {pass_name:<8} {impl:<18} "
                 f"{row['median_ms']:10.3f} ms ({row['repeats']} reps{extra}{diff})")
        else:
            _log(f"  {case.name:<16} {dtype_name:<5} {pass_name:<8} {impl:<18} ERROR {row['error']}")
    _select(default)
    del tensors, expected
    if is_cuda:
        torch.cuda.empty_cache()
    order = {name: i for i, name in enumerate(IMPL_ORDER)}
    rows.sort(key=lambda r: (PASSES.index(r["pass"]), order[r["impl"]]))
    return rows


def run_device(device_name: str, quick: bool = False, out_dir: Optional[Path] = None, reference: bool = True,
               compile_reference: bool = False, cases: Optional[List[str]] = None,
               dtypes: Optional[List[str]] = None, tf32: bool = False, write: bool = True) -> dict:
    """Benchmark every case of one device, with TF32 allowed on every side or on none (restored after);
    returns {"meta", "rows", "geomean", "skipped"}."""
    with tf32_set_to(tf32) as tf32_values:
        return _run_device(device_name, quick, out_dir, reference, compile_reference, cases, dtypes, write,
                           tf32_values)


def _run_device(device_name: str, quick: bool, out_dir: Optional[Path], reference: bool, compile_reference: bool,
                cases: Optional[List[str]], dtypes: Optional[List[str]], write: bool,
                tf32_values: Dict[str, bool]) -> dict:
    device = torch.device(device_name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    settings = timing_settings(device.type, quick)
    machine = machine_info(device_name)
    ceilings = gpu_ceilings(machine.get("gpu_name")) if device.type == "cuda" else None
    selected = cases_for(device.type, cases)

    impls = compared_impls(device.type)
    notes = [f"{OURS_CHANNELS_LAST}: ours on channels_last input, offset, mask, weight and grad_output, as a "
             f"channels_last model passes them (no layout conversion in the op)"]
    if device.type == "cuda":
        notes.append(f"ours = the default path (tensor cores for fp16/bf16, for fp32 under TF32, and for fp32 "
                     f"without TF32 on operands split in two TF32 parts, float32's accuracy) on the "
                     f"contiguous NCHW tensors every implementation gets; "
                     f"{OURS_WGMMA}, {OURS_WMMA}, {OURS_SYNC}, {OURS_SIMT}, {OURS_COLUMNS}: our other CUDA forward paths "
                     f"({ALGORITHM_ENV}), forward only, and {OURS_AUTOTUNE} the fastest of them as timed on its "
                     f"first call; {OURS_DETERMINISTIC}: forward+backward under "
                     f"torch.use_deterministic_algorithms(True)")
    try:
        import torchvision.ops  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        impls.remove(TORCHVISION)
        notes.append(f"torchvision unavailable ({type(exc).__name__}: {exc}): no speed-ups")
    if device.type == "cpu":
        try:
            import onnxruntime
            import onnxscript  # noqa: F401  (what torch.onnx.export needs)
            impls.append(ONNXRUNTIME)
            notes.append(f"{ONNXRUNTIME} = onnxruntime {onnxruntime.__version__}'s DeformConv (CPU execution "
                         f"provider, as many threads as torch's), forward only: the op exported by "
                         f"torch.onnx.export, weight and bias as initializers")
        except ImportError as exc:
            notes.append(f"onnxruntime unavailable ({exc}): no {ONNXRUNTIME} rows")
    impls.append(DENSE)
    if reference:
        impls.append(REFERENCE)
    else:
        notes.append("eager reference not run (--no-reference)")
    if compile_reference:
        impls.append(COMPILED)
        notes.append("reference+compile = torch.compile(reference, dynamic=False), one fresh compile per "
                     "case/dtype; compilation is excluded from its times (JSON: first_call_ms for the no_grad "
                     "forward, first_fwd_bwd_call_ms for the forward+backward, both incl. compilation)")
    else:
        notes.append("torch.compile of the reference not run (enable with --compile; slow to compile, "
                     "especially on a small CPU)")
    notes.append(f"{DENSE} = torch.nn.functional.conv2d of the same input, weight and bias, without offsets or "
                 f"mask: the same FLOPs without the sampling (no parity check, not in the geometric means)")
    notes.append("forward timed under torch.no_grad(); forward+backward = out.backward(grad_output) with "
                 "input, offset, weight, mask, bias requiring grad")

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    stem = f"{device.type}-{stamp}"
    meta = {
        "device": device_name,
        "device_type": device.type,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine,
        "tf32": tf32_values,
        "forward_algorithm": os.environ.get(ALGORITHM_ENV),
        "timing": {
            "method": ((f"torch.cuda.Event pair per call, calls queued back to back, each after a "
                        f"{CUDA_L2_FLUSH_BYTES >> 20} MB write that flushes L2"
                        if device.type == "cuda" else "time.perf_counter per call")
                       + f"; the implementations' calls interleaved in {TIMING_ROUNDS} rounds"),
            "settings": settings.as_dict(),
        },
        "ceilings": ceilings,
        "cases": {case.name: case.describe() for case in selected},
        "impls": impls,
        "reference_max_elements": REFERENCE_MAX_ELEMENTS,
        "seed": 1234,
        "notes": notes,
        "command": _command_line(),
    }
    result = {"meta": meta, "rows": [], "geomean": [], "skipped": []}
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_OUT_DIR

    tf32_text = ", ".join(f"{k.split('.')[-2]}.allow_tf32={v}" for k, v in tf32_values.items())
    where = machine.get("gpu_name") or f"{machine['cpu_model']}, {machine['torch_threads']} threads"
    _log(f"# deform_conv2d benchmark on {device_name} ({where}); torch {machine['torch']}, "
         f"torchvision {machine.get('torchvision')}; TF32: {tf32_text}; impls: {', '.join(impls)}"
         + ("; QUICK" if quick else ""))
    for case in selected:
        names = [d for d in case.dtypes[device.type] if not dtypes or d in dtypes]
        for dtype_name in names:
            rows = _measure_case_dtype(device, case, dtype_name, impls, settings, tf32_values, result["skipped"])
            _finish_rows(rows, ceilings)
            result["rows"].extend(rows)
            result["geomean"] = geomean_speedups(result["rows"])
            if write:  # partial results survive an interrupted run
                _write(result, out_dir, stem)
    _finish_rows(result["rows"], ceilings)
    result["geomean"] = geomean_speedups(result["rows"])

    _log("")
    _log(markdown_report(result))
    if write:
        json_path, md_path = _write(result, out_dir, stem)
        _log(f"wrote {json_path} and {md_path}")
        result["paths"] = {"json": str(json_path), "markdown": str(md_path)}
    return result


def run(devices=None, quick: bool = False, out_dir=None, reference: bool = True, *,
        compile_reference: bool = False, cases: Optional[List[str]] = None,
        dtypes: Optional[List[str]] = None, tf32: bool = False, write: bool = True) -> List[dict]:
    """Run the benchmark on ``devices`` ("cpu", "cuda", "all"/None or a list); returns all rows.

    Writes ``<out_dir>/<device>-<YYYYMMDD-HHMMSS>.json`` and ``.md`` per device (out_dir defaults to
    benchmarks/results/).
    """
    import rcm_fsad_ops  # noqa: F401  (fail early with the real import error)

    rows: List[dict] = []
    for device in resolve_devices(devices):
        result = run_device(device, quick=quick, out_dir=out_dir, reference=reference,
                            compile_reference=compile_reference, cases=cases, dtypes=dtypes, tf32=tf32,
                            write=write)
        rows.extend(result["rows"])
    return rows


# ---------------------------------------------------------------------------------------------------
# command line


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    """The runner's command line, also the one of ``python -m rcm_fsad_ops bench`` (under that ``prog``).
    Returns the parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark rcm_fsad_ops.deform_conv2d against torchvision.ops.deform_conv2d and the eager "
                    "reference, side by side on the same inputs.")
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"],
                        help="device to benchmark (default: every available one)")
    parser.add_argument("--quick", action="store_true", help="tiny warm-up and repeats (smoke test)")
    parser.add_argument("--out", default=str(DEFAULT_OUT_DIR),
                        help="folder for the JSON and markdown results (default: benchmarks/results)")
    parser.add_argument("--no-reference", action="store_true", help="skip the eager pure-PyTorch reference")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile(reference) (compiles once per case and dtype)")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 for fp32 matmuls/convolutions (default: off on every side)")
    parser.add_argument("--cases", nargs="+", metavar="NAME", help="only these cases (see benchmarks/shapes.py)")
    parser.add_argument("--dtypes", nargs="+", metavar="DTYPE", choices=sorted(set(DTYPE_NAMES.values())),
                        help="only these dtypes (fp32 fp64 fp16 bf16)")
    parser.add_argument("--no-write", action="store_true", help="print the tables only, write no files")
    return parser


def main(argv: Optional[Iterable[str]] = None) -> int:
    return run_command(build_parser().parse_args(list(argv) if argv is not None else None))


def run_command(args: argparse.Namespace) -> int:
    """Run what the parsed command line (``build_parser``) asks for. Returns 0 when every measurement
    ran, 1 when some failed, 2 when nothing could run (no such device, unknown case, import error)."""
    try:
        rows = run(args.device, quick=args.quick, out_dir=Path(args.out), reference=not args.no_reference,
                   compile_reference=args.compile, cases=args.cases, dtypes=args.dtypes, tf32=args.tf32,
                   write=not args.no_write)
    except (RuntimeError, ValueError, ImportError) as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 2
    errors = [row for row in rows if row["status"] != "ok"]
    if errors:
        print(f"benchmarks: {len(errors)} measurement(s) failed (see the notes above)", file=sys.stderr)
    return 1 if errors else 0
