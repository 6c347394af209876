"""The CPU forward's weight cache (csrc/cpu/weight_cache.h): operands kept for a weight seen twice at the same
version, handed out only while the weight's bytes are those they were made from. Every result is checked
against torchvision's float64 forward of the weight as it is at that call, so a stale operand fails."""
from __future__ import annotations

import threading

import pytest
import torch
import torchvision

import rcm_fsad_ops
from tests.deform_cases import DeformCase
from tests.test_deform_conv2d import two_threads  # noqa: F401  (a fixture)

# A layer oneDNN's products (float32) or ATen's GEMM (float64) take, and a depthwise one the group loops take.
CASE = DeformCase(batch=2, in_channels=16, out_channels=8, height=6, width=5, seed=3)
DEPTHWISE = DeformCase(batch=2, in_channels=8, out_channels=16, groups=8, height=5, width=5, seed=4)


@pytest.fixture(autouse=True)
def empty_cache():
    rcm_fsad_ops.clear_cpu_weight_cache()
    yield
    rcm_fsad_ops.clear_cpu_weight_cache()


def counters() -> dict:
    return rcm_fsad_ops.info()["cpu_weight_cache"]


def forward(tensors: dict, weight: torch.Tensor, case: DeformCase = CASE) -> torch.Tensor:
    return rcm_fsad_ops.deform_conv2d(tensors["input"], tensors["offset"], weight, tensors["bias"],
                                      mask=tensors["mask"], **case.kwargs())


def assert_is_torchvision(out: torch.Tensor, tensors: dict, weight: torch.Tensor, case: DeformCase = CASE):
    expected = torchvision.ops.deform_conv2d(*(t.double() for t in (tensors["input"], tensors["offset"], weight,
                                                                  tensors["bias"])),
                                             mask=tensors["mask"].double(), **case.kwargs())
    tolerance = 1e-5 if out.dtype in (torch.float32, torch.float64) else 3e-2
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [CASE, DEPTHWISE], ids=["dense", "depthwise"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_a_weight_seen_twice_is_kept_and_its_operands_reused(dtype, case, layout):
    """float32: oneDNN's packing (dense) or the group loops' matrix (depthwise); float64: ATen's GEMM's matrix."""
    tensors = case.tensors(dtype)
    weight = tensors["weight"]
    if layout == "channels_last":
        weight = weight.contiguous(memory_format=torch.channels_last)
    first = forward(tensors, weight, case)
    assert counters()["entries"] == 0 and counters()["builds"] == 1
    second = forward(tensors, weight, case)
    assert counters()["entries"] == 1 and counters()["builds"] == 2 and counters()["hits"] == 0
    for _ in range(3):
        kept = forward(tensors, weight, case)
        torch.testing.assert_close(kept, first, rtol=0, atol=0)
    assert counters()["entries"] == 1 and counters()["builds"] == 2 and counters()["hits"] == 3
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert_is_torchvision(kept, tensors, weight, case)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_weights_computed_in_float32_are_kept_under_their_own_bytes(dtype):
    """bfloat16 layers this small, and float16 ones, compute in float32 on the caller's weight converted: the
    operands are made from it and kept under it (under a converted copy, a new tensor on every call, two layers
    of one shape had alternated in one entry). Two such weights, called in turn, each get their own result."""
    tensors = {k: v.to(dtype) for k, v in CASE.tensors(torch.float32).items()}
    weights = [tensors["weight"], -tensors["weight"]]
    first = [forward(tensors, w) for w in weights]
    for _ in range(3):
        for weight, out in zip(weights, first):
            torch.testing.assert_close(forward(tensors, weight), out, rtol=0, atol=0)
    assert counters()["entries"] == 2 and counters()["builds"] == 4 and counters()["hits"] == 4
    for weight, out in zip(weights, first):
        assert_is_torchvision(out, tensors, weight)


@pytest.mark.parametrize("write", ["through .data", "in place under no_grad", "inference tensor in place"])
def test_a_kept_weight_written_in_place_gives_the_new_weight_result(write):
    """Writes through .data bump no version; in-place writes of an inference tensor have none to bump. Each is
    seen by the comparison of the weight's bytes, and the operands are made again."""
    tensors = CASE.tensors(torch.float32)
    weight = tensors["weight"].clone()
    if write == "inference tensor in place":
        with torch.inference_mode():
            weight = weight.clone()
    for _ in range(3):
        forward(tensors, weight)
    assert counters()["hits"] == 1
    with torch.inference_mode() if write == "inference tensor in place" else torch.no_grad():
        target = weight.data if write == "through .data" else weight
        target[0, 0, 0, 0] += 1.0  # one element: the others' bytes are the kept copy's
    builds = counters()["builds"]
    out = forward(tensors, weight)
    assert counters()["builds"] == builds + 1
    assert_is_torchvision(out, tensors, weight)


@pytest.mark.parametrize("element", ["first", "last"])
def test_a_write_anywhere_in_a_large_kept_weight_is_seen(element, two_threads):
    """A weight of several chunks of the comparison (256 KiB each, shared among the threads): a write into the
    first or the last one makes the operands again."""
    case = DeformCase(batch=1, in_channels=64, out_channels=128, height=4, width=4, seed=5)
    tensors = case.tensors(torch.float32)
    weight = tensors["weight"].clone()
    assert weight.nbytes > 256 << 10
    for _ in range(3):
        forward(tensors, weight, case)
    assert counters()["hits"] == 1
    weight.data.view(-1)[0 if element == "first" else -1] += 1.0
    out = forward(tensors, weight, case)
    assert counters()["hits"] == 1
    assert_is_torchvision(out, tensors, weight, case)


def test_weights_of_the_same_shape_each_get_their_own_result():
    tensors = CASE.tensors(torch.float32)
    weights = [tensors["weight"] * scale for scale in (1.0, -2.0, 0.5)]
    for _ in range(3):
        for weight in weights:
            assert_is_torchvision(forward(tensors, weight), tensors, weight)
    assert counters()["entries"] == 3 and counters()["hits"] == 3


def test_a_weight_trained_in_place_is_never_kept():
    """An optimiser's step bumps the weight's version, so a trained weight is never seen twice at one."""
    tensors = CASE.tensors(torch.float32)
    weight = tensors["weight"].clone().requires_grad_(True)
    optimiser = torch.optim.SGD([weight], lr=0.1)
    for _ in range(4):
        optimiser.zero_grad()
        out = forward(tensors, weight)
        assert_is_torchvision(out.detach(), tensors, weight.detach())
        out.square().sum().backward()
        optimiser.step()
    assert counters()["entries"] == 0 and counters()["hits"] == 0 and counters()["builds"] == 4


def test_capacity_bounds_what_is_kept(monkeypatch):
    tensors = CASE.tensors(torch.float32)
    weights = [tensors["weight"] + k for k in range(3)]
    for weight in weights:
        forward(tensors, weight)
        forward(tensors, weight)
    entry_bytes = counters()["bytes"] // 3
    assert counters()["entries"] == 3 and entry_bytes >= weights[0].nbytes
    # Two entries' worth: the least recently used (weights[0]) goes first.
    monkeypatch.setenv("RCM_FSAD_CPU_WEIGHT_CACHE_BYTES", str(2 * entry_bytes))
    forward(tensors, weights[2])
    assert counters()["entries"] == 2 and counters()["capacity"] == 2 * entry_bytes
    hits = counters()["hits"]
    forward(tensors, weights[1])
    assert counters()["hits"] == hits + 1
    forward(tensors, weights[0])
    assert counters()["hits"] == hits + 1
    monkeypatch.setenv("RCM_FSAD_CPU_WEIGHT_CACHE_BYTES", "0")
    for _ in range(3):
        assert_is_torchvision(forward(tensors, weights[2]), tensors, weights[2])
    assert counters()["entries"] == 0 and counters()["bytes"] == 0


def test_a_weight_whose_elements_are_not_dense_is_not_kept():
    tensors = CASE.tensors(torch.float32)
    wide = torch.cat([tensors["weight"], tensors["weight"]], dim=1)
    weight = wide[:, ::2]  # every other input channel: tensors["weight"]'s values, not dense
    for _ in range(3):
        assert_is_torchvision(forward(tensors, weight), tensors, weight.contiguous())
    assert counters()["entries"] == 0 and counters()["builds"] == 3


def test_threads_sharing_the_cache_each_get_their_own_weight_result():
    tensors = CASE.tensors(torch.float32)
    weights = [tensors["weight"] * (k + 1) for k in range(4)]
    expected = [forward(tensors, w) for w in weights]
    failures = []

    def run(k: int):
        for _ in range(20):
            out = forward(tensors, weights[k])
            if not torch.equal(out, expected[k]):
                failures.append(k)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert counters()["hits"] > 0


def test_a_weight_kept_for_one_product_is_made_again_for_another(monkeypatch):
    """With oneDNN off, float32 products take ATen's GEMM, which needs the matrix, not oneDNN's packing: the
    entry of one product is not the other's."""
    tensors = CASE.tensors(torch.float32)
    weight = tensors["weight"]
    for _ in range(3):
        forward(tensors, weight)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    for _ in range(3):
        assert_is_torchvision(forward(tensors, weight), tensors, weight)
    assert counters()["entries"] == 2 and counters()["hits"] == 2


@pytest.mark.skipif(not rcm_fsad_ops.info()["cpu_bfloat16_gemms"],
                    reason="this CPU computes bfloat16 forwards in float32, oneDNN on or off")
def test_a_bfloat16_weight_kept_for_bfloat16_gemms_is_made_again_for_float32_ones(monkeypatch):
    """With oneDNN on, a bfloat16 layer this large multiplies in bfloat16 (ATen's GEMM on a bfloat16 matrix); with
    it off, in float32 (ATen's GEMM on a float32 matrix): one product, other operands, an entry each."""
    case = DeformCase(batch=1, in_channels=32, out_channels=32, height=5, width=5, seed=5)
    tensors = {k: v.to(torch.bfloat16) for k, v in case.tensors(torch.float32).items()}
    weight = tensors["weight"]
    for _ in range(3):
        assert_is_torchvision(forward(tensors, weight, case), tensors, weight, case)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    for _ in range(3):
        assert_is_torchvision(forward(tensors, weight, case), tensors, weight, case)
    assert counters()["entries"] == 2 and counters()["hits"] == 2
