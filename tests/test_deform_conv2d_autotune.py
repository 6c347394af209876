"""RCM_FSAD_DEFORM_CONV_ALGO=autotune: the CUDA forward times its paths on a problem's first call and keeps
the fastest (GPU only; the parity tests of tests/test_deform_conv2d.py also run it, as the cuda-autotune
backend)."""
from __future__ import annotations

import pytest
import torch

import rcm_fsad_ops
from benchmarks.environment import tf32_set_to
from benchmarks.implementations import ALGORITHM_ENV
from tests.deform_cases import DeformCase
from tests.test_deform_conv2d import runs_as

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

# Every path the autotuner can choose; each run alone gives the bits autotune must reproduce.
PATHS = ("implicit_gemm", "implicit_gemm_wmma", "implicit_gemm_sync", "implicit_gemm_simt", "columns")
# Channel runs of whole 16-byte vectors, so that every tensor-core kernel is a candidate in 16 bits.
CASE = DeformCase(batch=2, in_channels=32, out_channels=64, height=12, width=10, seed=7)
# In float32 with TF32 off, a problem where another path should beat the default: its channels are not
# whole 16-byte vectors (254), so the default is the CUDA-core kernel (split TF32 needs vectors), and it
# is big enough for the columns path (cuBLAS) to win, as it did at N32 C256 56x56 on the H200 in session
# 12 (3.99 against 4.63 ms, both with 16-byte loads). The tests of what autotune does with its choice
# need one that is not the default's; where the default wins they skip: they could not tell.
COLUMNS_WIN = DeformCase(batch=16, in_channels=254, out_channels=256, height=56, width=56, seed=9)


def forward(tensors: dict, case: DeformCase = CASE) -> torch.Tensor:
    with torch.no_grad():
        return rcm_fsad_ops.deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"],
                                          mask=tensors["mask"], **case.kwargs())


def tensors_of(dtype: torch.dtype, case: DeformCase = CASE) -> dict:
    return case.tensors(dtype, "cuda")


def outputs_by_path(tensors: dict, monkeypatch, case: DeformCase = CASE) -> dict:
    out = {}
    for path in PATHS:
        monkeypatch.setenv(ALGORITHM_ENV, path)
        out[path] = forward(tensors, case)
    return out


def autotuned_not_default(monkeypatch, case: DeformCase) -> tuple:
    """float32 tensors of case (TF32 off), the default path's output, and the autotuned one; skips where
    autotune chose the default path."""
    tensors = tensors_of(torch.float32, case)
    monkeypatch.setenv(ALGORITHM_ENV, "implicit_gemm")
    default = forward(tensors, case)
    monkeypatch.setenv(ALGORITHM_ENV, "autotune")
    autotuned = forward(tensors, case)
    if torch.equal(autotuned, default):
        pytest.skip("autotune chose the default path here: this test could not tell it from the fallback")
    return tensors, default, autotuned


@pytest.mark.parametrize("dtype, tf32", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False),
                                         (torch.float16, False)], ids=["float32", "tf32", "bfloat16", "float16"])
def test_cuda_autotune_gives_the_bits_of_one_path_and_keeps_them(dtype, tf32, monkeypatch):
    """The autotuned output is bit for bit that of one of the paths run alone (not a blend of them), and
    the same on every later call (the choice is remembered). TF32 concerns float32 only."""
    tensors = tensors_of(dtype)
    with tf32_set_to(tf32):
        by_path = outputs_by_path(tensors, monkeypatch)
        monkeypatch.setenv(ALGORITHM_ENV, "autotune")
        first = forward(tensors)
        again = [forward(tensors) for _ in range(3)]
    matching = [path for path, out in by_path.items() if torch.equal(out, first)]
    assert matching, {path: (out - first).abs().max().item() for path, out in by_path.items()}
    assert all(torch.equal(first, out) for out in again)


def test_cuda_autotune_under_deterministic_algorithms_takes_the_default_path(monkeypatch):
    """Under torch.use_deterministic_algorithms the result must not hang on which path won a timing:
    autotune gives the default path's bits, on a problem where it otherwise chooses another path."""
    with tf32_set_to(False):
        tensors, default, _ = autotuned_not_default(monkeypatch, COLUMNS_WIN)
        out = runs_as(True, forward, tensors, COLUMNS_WIN)
    assert torch.equal(out, default)


def test_cuda_autotune_inside_cuda_graph_capture(monkeypatch):
    """Capture may not wait on the device: a problem tuned before capture replays its chosen path (here
    not the default), and one first met during capture takes the default path without timing (the
    capture would fail if it synchronised)."""
    with tf32_set_to(False):
        seen, _, eager = autotuned_not_default(monkeypatch, COLUMNS_WIN)
        unseen_case = COLUMNS_WIN.with_(height=13, seed=10)
        unseen = tensors_of(torch.float32, unseen_case)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured_seen = forward(seen, COLUMNS_WIN)
            captured_unseen = forward(unseen, unseen_case)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured_seen, eager)
        monkeypatch.setenv(ALGORITHM_ENV, "implicit_gemm")
        assert torch.equal(captured_unseen, forward(unseen, unseen_case))
