"""How the runner times a call (benchmarks.runner).

Every implementation is warmed up (a few calls, at least a short wall time), then their timed calls are
interleaved, in TIMING_ROUNDS rounds of a share of each (``round_share``), so that a drift in the
machine's speed weighs on all alike; the reported time is the median. CPU: ``time.perf_counter`` per
call (caches not flushed), each slice after a pause that lets the threads of the implementation before
it stop spinning (CPU_SETTLE_S). CUDA: a pair of ``torch.cuda.Event`` around each call, the calls
queued back to back with no synchronisation between them, each after a write of CUDA_L2_FLUSH_BYTES
that evicts the last call's data from L2 (the method of ``triton.testing.do_bench``): a time is the
device's, with the host's work for a call hidden behind the flush before it (where it takes less than
the flush, about 70 us on an H200), as a model's stream of calls hides it, and no call reads its inputs
from the L2 the one before left.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch

from benchmarks.implementations import call, leaf_tensors
from benchmarks.shapes import FWD, Case


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


def make_step(fn: Callable, tensors: Dict[str, torch.Tensor], case: Case, pass_name: str):
    """(prepare, step): prepare runs outside the timed region, step is what is timed."""
    if pass_name == FWD:
        leaves = leaf_tensors(tensors, requires_grad=False)

        def step():
            with torch.no_grad():
                call(fn, leaves, case)

        return (lambda: None), step

    leaves = leaf_tensors(tensors, requires_grad=True)
    grad_output = tensors["grad_output"]

    def prepare():
        for leaf in leaves.values():
            leaf.grad = None
        # As an optimiser's step would: a forward+backward times training, where ours' CPU weight cache
        # (rcm_fsad_ops.clear_cpu_weight_cache) never keeps the weight, whose version each step bumps.
        torch.autograd.graph.increment_version(leaves["weight"])

    def step():
        call(fn, leaves, case).backward(grad_output)

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


class Timing:
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
