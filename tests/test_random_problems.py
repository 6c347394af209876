"""deform_conv2d on random problems (tests.deform_cases.random_case, odd seeds channels_last), judged as
test_deform_conv2d.py judges its fixed cases. On CUDA they reach the launchers' choices (kernels, layouts,
16-byte paths, column tiles, splits over kernel points) on geometries nobody picked; the CUDA kernels' own
random problems run on the CPU (tests/kernels, `fuzz`).

Twelve problems: on a GPU each runs on six forward paths in five precisions, and in float64 also with the
deterministic backward, 432 tests of gpu_check.sh's `tests` step. This file sorts after every other file
with CUDA tests, so that where that step runs out of time it is these that are cut."""
from __future__ import annotations

import pytest
import torch
import torchvision

import rcm_fsad_ops
from tests.deform_cases import random_case
from tests.test_deform_conv2d import (
    LOW_PRECISIONS,
    assert_float32_error_is_that_of_float32_arithmetic,
    assert_low_precision_error_is_that_of_its_rounding,
    assert_matches,
    run_with_grads,
    runs_as,
)

SEEDS = range(12)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_random_problems_match_torchvision_float64(seed, deterministic, device, monkeypatch):
    """Also under torch.use_deterministic_algorithms, whose CUDA backward gathers the input gradient
    without atomics (its sample table, sort and gather, each run by the launcher in pieces)."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what some PyTorch versions ask for cuBLAS
    case = random_case(seed)
    tensors = case.tensors(torch.float64, device)
    ours = runs_as(deterministic, run_with_grads, rcm_fsad_ops.deform_conv2d, case, tensors)
    theirs = run_with_grads(torchvision.ops.deform_conv2d, case, tensors)
    assert_matches(ours, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_problems_float32_error_is_that_of_float32_arithmetic(seed, device):
    assert_float32_error_is_that_of_float32_arithmetic(random_case(seed), device)


@pytest.mark.parametrize("precision", sorted(LOW_PRECISIONS))
@pytest.mark.parametrize("seed", SEEDS)
def test_random_problems_low_precision_error_is_that_of_its_rounding(seed, precision, device):
    if device == "cpu" and precision == "tf32":
        pytest.skip("TF32 is a CUDA setting")
    assert_low_precision_error_is_that_of_its_rounding(random_case(seed), precision, device)
