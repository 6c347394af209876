"""pytest-benchmark suite: rcm_fsad_ops.deform_conv2d (on contiguous tensors, and on channels_last ones as a
channels_last model passes them) vs torchvision.ops.deform_conv2d and, on the CPU forward, onnxruntime's
DeformConv, beside a dense conv2d of the same shape (the runner's yardstick, benchmarks/implementations.py).

Same cases and inputs as ``python -m benchmarks`` (benchmarks/shapes.py), forward and forward+backward.
Each (device, case, dtype, pass) is one pytest-benchmark group, so ``--benchmark-only`` prints ours,
ours[channels_last], torchvision, onnxruntime and the dense conv2d next to each other. CUDA cases are
skipped without a GPU, and onnxruntime where the runner skips it (backward, bfloat16, CUDA, not
installed). TF32 is off on every side. It only times: what each implementation computes is judged by the
test suite, and by the runner's column of differences from torchvision.

Run:  pytest benchmarks --benchmark-only
      pytest benchmarks --benchmark-only -k "cpu and fwd_bwd" --benchmark-min-rounds=3
"""
from __future__ import annotations

import pytest

pytest.importorskip("pytest_benchmark")

import torch  # noqa: E402

from benchmarks.environment import tf32_set_to  # noqa: E402
from benchmarks.implementations import (DENSE, ONNXRUNTIME, ONNXRUNTIME_DTYPES, OURS, OURS_CHANNELS_LAST,  # noqa: E402
                                        TORCHVISION, current_variant, dense_conv2d, in_layout,
                                        onnxruntime_deform_conv, ours, pick_torchvision, variant_of)
from benchmarks.shapes import CASES, FWD, FWD_BWD, dtype_of  # noqa: E402
from benchmarks.timing import make_step  # noqa: E402

DEVICE_DTYPE_CASES = [
    pytest.param(device, case, dtype_name, id=f"{device}-{case.name}-{dtype_name}",
                 marks=[pytest.mark.cuda] if device == "cuda" else [])
    for device in ("cpu", "cuda")
    for case in CASES
    if device in case.dtypes
    for dtype_name in case.dtypes[device]
]
PASS_PARAMS = [pytest.param(FWD, id="fwd"), pytest.param(FWD_BWD, id="fwd_bwd")]
IMPL_PARAMS = [OURS, OURS_CHANNELS_LAST, TORCHVISION, ONNXRUNTIME, DENSE]

_INPUTS: dict = {}


def _inputs(case, device: str, dtype_name: str):
    """Inputs of one case, cached for the run of consecutive tests that share them (one entry kept)."""
    key = (case.name, device, dtype_name)
    if key not in _INPUTS:
        _INPUTS.clear()
        if device == "cuda":
            torch.cuda.empty_cache()
        _INPUTS[key] = case.make_inputs(device, dtype_of(dtype_name))
    return _INPUTS[key]


@pytest.fixture
def tf32_off():
    """fp32 is IEEE fp32 on every side, as in the runner; the switches' values, restored after."""
    with tf32_set_to(False) as values:
        yield values


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("pass_name", PASS_PARAMS)
@pytest.mark.parametrize("device, case, dtype_name", DEVICE_DTYPE_CASES)
def test_deform_conv2d(benchmark, tf32_off, device, case, dtype_name, pass_name, impl):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if impl == ONNXRUNTIME:
        if device != "cpu" or pass_name != FWD or dtype_name not in ONNXRUNTIME_DTYPES:
            pytest.skip("onnxruntime runs the CPU forward in fp16, fp32 and fp64 only")
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")  # what torch.onnx.export needs
    tensors = in_layout(_inputs(case, device, dtype_name), variant_of(impl, current_variant()))
    note = ""
    if impl in (OURS, OURS_CHANNELS_LAST):
        fn = ours()
    elif impl == DENSE:
        fn = dense_conv2d()
    elif impl == ONNXRUNTIME:
        fn = onnxruntime_deform_conv(tensors, case)
    else:
        fn, note, _ = pick_torchvision(tensors, case)
    prepare, step = make_step(fn, tensors, case, pass_name)
    if device == "cuda":
        def target():
            prepare()
            step()
            torch.cuda.synchronize()
    else:
        def target():
            prepare()
            step()

    element_size = torch.empty((), dtype=dtype_of(dtype_name)).element_size()
    flops = case.flops(pass_name)
    min_bytes = case.min_bytes(pass_name, element_size)
    benchmark.group = f"{device} {case.name} {dtype_name} {pass_name}"
    benchmark.extra_info.update({
        "case": case.describe(), "dtype": dtype_name, "pass": pass_name, "impl": impl, "impl_note": note,
        "flops": flops, "min_bytes": min_bytes, "tf32": tf32_off, "threads": torch.get_num_threads(),
    })
    benchmark(target)

    stats = getattr(benchmark, "stats", None)
    median = getattr(getattr(stats, "stats", None), "median", None)
    if median:
        benchmark.extra_info["gflops_at_median"] = flops / median / 1e9
        benchmark.extra_info["gbps_at_median"] = min_bytes / median / 1e9
