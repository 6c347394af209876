"""What a call costs where the arithmetic does not count: the Python wrapper, the dispatcher, autograd,
argument checks, allocations and launches that a small layer pays on every call, for ours beside
torchvision's deform_conv2d and a dense conv2d of the same shape.

The problem is tiny (CALL_OVERHEAD_CASE: N=1, C=8, 8x8, 3x3, mask and bias, float32), the passes the
runner's (``timing.make_step``): the forward under ``torch.no_grad`` and forward+backward. Each
implementation's calls run back to back in slices, the slices of all of them interleaved over
TIMING_ROUNDS rounds; on CUDA the device is synchronised only at the end of a slice, as in a model's
stream of small layers. The table gives the median slice's time per call, and of it the time until the
host had returned from the slice's last call: on CUDA, where that is the whole time but the final wait,
the host was the bound; where it is much less, the device was (the queue filled and the host waited).

usage: python -m benchmarks.call_overhead [--device cpu|cuda] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch

from benchmarks.environment import machine_info
from benchmarks.implementations import DENSE, OURS, TORCHVISION, dense_conv2d, ours, pick_torchvision
from benchmarks.shapes import PASSES, Case
from benchmarks.timing import CPU_SETTLE_S, TIMING_ROUNDS, make_step

CALL_OVERHEAD_CASE = Case("n1_c8_8x8", n=1, c_in=8, h=8, w=8)
IMPLS = (OURS, TORCHVISION, DENSE)
# Seconds a timed slice takes, about: its calls are counted from the warm-up's time per call.
SLICE_S = 0.1


class SliceTime(NamedTuple):
    """Microseconds per call of a slice: until the last call returned (the host's submission), and until
    the device finished it too (the same on the CPU)."""
    host_us: float
    total_us: float


class OverheadRow(NamedTuple):
    pass_name: str
    impl: str
    us_per_call: float  # the median slice's total
    host_us_per_call: float  # the median slice's host share: below us_per_call, the device was the bound
    vs_torchvision: float  # torchvision's time over this one: above 1, this one is cheaper


def _slice(prepare: Callable, step: Callable, device: torch.device, calls: int) -> SliceTime:
    """`calls` calls back to back (each after its prepare: a training step's reset of the gradients and bump of
    the weight's version). On the CPU after a pause that lets the threads of the slice before stop spinning
    (timing.CPU_SETTLE_S); on CUDA with the device synchronised before the first call and after the last only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:
        time.sleep(CPU_SETTLE_S)
    start = time.perf_counter()
    for _ in range(calls):
        prepare()
        step()
    submitted = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    finished = time.perf_counter()
    return SliceTime((submitted - start) / calls * 1e6, (finished - start) / calls * 1e6)


def _calls_per_slice(us_per_call: float) -> int:
    return max(50, min(5000, int(SLICE_S * 1e6 / max(us_per_call, 1e-3))))


def measure(device: str, quick: bool = False) -> List[OverheadRow]:
    """The time per call of each implementation in IMPLS and each pass, CALL_OVERHEAD_CASE in float32:
    the median of TIMING_ROUNDS slices, each implementation's slices interleaved with the others'."""
    dev = torch.device(device)
    case = CALL_OVERHEAD_CASE
    tensors = case.make_inputs(device, torch.float32)
    torchvision_fn = pick_torchvision(tensors, case)[0]
    fns: Dict[str, Callable] = {OURS: ours(), TORCHVISION: torchvision_fn, DENSE: dense_conv2d()}
    warmup = 2 if quick else 50
    rows = []
    for pass_name in PASSES:
        steps = {impl: make_step(fns[impl], tensors, case, pass_name) for impl in IMPLS}
        # Slices of about SLICE_S each, from the warm-up's time per call, so that the pause before a slice
        # and its first calls after it weigh little.
        warmed = {impl: _slice(prepare, step, dev, warmup) for impl, (prepare, step) in steps.items()}
        calls = {impl: 3 if quick else _calls_per_slice(warm.total_us) for impl, warm in warmed.items()}
        slices: Dict[str, List[SliceTime]] = {impl: [] for impl in IMPLS}
        for _ in range(TIMING_ROUNDS):
            for impl, (prepare, step) in steps.items():
                slices[impl].append(_slice(prepare, step, dev, calls[impl]))
        total = {impl: statistics.median(t.total_us for t in times) for impl, times in slices.items()}
        host = {impl: statistics.median(t.host_us for t in times) for impl, times in slices.items()}
        rows += [OverheadRow(pass_name, impl, total[impl], host[impl], total[TORCHVISION] / total[impl])
                 for impl in IMPLS]
    return rows


def markdown(rows: Sequence[OverheadRow], device: str) -> str:
    case = CALL_OVERHEAD_CASE
    machine = machine_info(device)
    lines = [f"## Cost of a call on {device}: {case.name} (N={case.n} C={case.c_in} {case.h}x{case.w}, 3x3, "
             f"mask, bias), float32",
             "",
             f"- {machine.get('gpu_name', machine['cpu_model'])}, {machine['torch_threads']} torch threads; "
             f"torch {machine['torch']}, torchvision {machine['torchvision']}, rcm_fsad_ops "
             f"{machine.get('rcm_fsad_ops')} (git {machine['git']})",
             "",
             "| pass | impl | us per call | of it, until the host returned | vs torchvision |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.pass_name} | {r.impl} | {r.us_per_call:.1f} | {r.host_us_per_call:.1f} | {r.vs_torchvision:.2f}x |"
              for r in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.call_overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="a few calls each: checks that it runs, times nothing")
    parser.add_argument("--out", type=Path, help="also write the table to OUT/<device>-call-overhead-<date>.md")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.call_overhead: no GPU visible", file=sys.stderr)
        return 2
    table = markdown(measure(args.device, args.quick), args.device)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{args.device}-call-overhead-{time.strftime('%Y%m%d-%H%M%S')}.md"
        path.write_text(table + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
