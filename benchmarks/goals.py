"""The performance goals of the DCNv2 op, judged from benchmark results (the JSON that
``python -m benchmarks`` writes): for each goal the measured value, the target, and whether it is met.

usage: python -m benchmarks.goals RESULT.json [RESULT.json ...]

  CPU (fp32, geometric mean over the cases)   forward >= 5x torchvision, forward+backward >= 10x
  CUDA (fp32, geometric mean over the cases)  forward >= 3x torchvision, per TF32 setting (the same on
                                              both sides: one result file each); ours, and where the
                                              run has it ours[implicit_gemm_wgmma]
  CUDA (bf16, N32 C256 56x56)                 forward at >= 40% of the bf16 tensor-core roofline (ours on
                                              the contiguous tensors, and where the run has them
                                              ours[channels_last], which converts no layout, and
                                              ours[implicit_gemm_wgmma], the opt-in Hopper kernel)

A goal whose rows are missing from a file is not listed for it; a speed-up goal of a run that covered
only some of the device's cases (--cases, or cut short) is listed as not met, with the count. Prints one
markdown table; exits 2 when a file cannot be read, 0 otherwise (a goal not met is a result, not an
error).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

from benchmarks.implementations import OURS, OURS_CHANNELS_LAST, OURS_WGMMA, TORCHVISION
from benchmarks.shapes import FWD, FWD_BWD, cases_for

GOAL_CASE = "n32_c256_56x56"
ROOFLINE_TARGET_PCT = 40.0


class GoalResult(NamedTuple):
    goal: str
    setting: str
    measured: str
    target: str
    met: bool
    source: str


def _geomean(result: dict, dtype: str, pass_name: str, impl: str) -> Optional[dict]:
    return next((g for g in result["geomean"] if g["impl"] == impl and g["dtype"] == dtype
                 and g["pass"] == pass_name), None)


def _row(result: dict, case: str, dtype: str, pass_name: str, impl: str) -> Optional[dict]:
    return next((r for r in result["rows"] if r["case"] == case and r["dtype"] == dtype and r["pass"] == pass_name
                 and r["impl"] == impl and r["status"] == "ok"), None)


def goals_of(result: dict, source: str) -> List[GoalResult]:
    """The goals one result file can judge."""
    device = result["meta"]["device_type"]
    tf32 = result["meta"]["tf32"]["torch.backends.cuda.matmul.allow_tf32"]
    out: List[GoalResult] = []
    speedup_targets = {"cpu": ((FWD, 5.0), (FWD_BWD, 10.0)), "cuda": ((FWD, 3.0),)}[device]
    for impl in {"cpu": (OURS,), "cuda": (OURS, OURS_WGMMA)}[device]:
        for pass_name, target in speedup_targets:
            mean = _geomean(result, "fp32", pass_name, impl)
            if mean is None:
                continue
            value = mean["geomean_speedup_vs_torchvision"]
            expected = len(cases_for(device))
            complete = mean["cases"] >= expected
            setting = f"geomean of {mean['cases']} cases" + ("" if complete else f" (partial run: of {expected})")
            if device == "cuda":
                setting += f", TF32 {'on' if tf32 else 'off'}"
            name = "" if impl == OURS else f" {impl}"
            out.append(GoalResult(f"{device} fp32 {pass_name}{name} vs torchvision", setting, f"{value:.2f}x",
                                  f">= {target:g}x", complete and value >= target, source))
    ceilings = result["meta"].get("ceilings")  # none for a GPU whose ceilings are not known
    for impl in (OURS, OURS_CHANNELS_LAST, OURS_WGMMA):
        ours = _row(result, GOAL_CASE, "bf16", FWD, impl) if device == "cuda" and ceilings else None
        if ours is None:
            continue
        ceiling = ceilings["flops_per_s"]["bf16"]
        pct = ours["roofline_pct"]  # of the bf16 ceiling: the case is compute-bound
        needed_ms = ours["flops"] / (ROOFLINE_TARGET_PCT / 100.0 * ceiling) * 1e3
        tv = _row(result, GOAL_CASE, "bf16", FWD, TORCHVISION)
        versus = f", {tv['median_ms'] / ours['median_ms']:.2f}x torchvision" if tv else ""
        name = "" if impl == OURS else f" {impl}"
        out.append(GoalResult(f"cuda bf16 fwd{name}, {GOAL_CASE}, share of {ceiling / 1e12:.0f} TFLOP/s",
                              f"{ours['median_ms']:.3f} ms{versus}", f"{pct:.1f}%",
                              f">= {ROOFLINE_TARGET_PCT:g}% (<= {needed_ms:.3f} ms)", pct >= ROOFLINE_TARGET_PCT,
                              source))
    return out


def markdown(goals: Sequence[GoalResult]) -> str:
    lines = ["| goal | setting | measured | target | met | from |", "|---|---|---|---|---|---|"]
    lines += [f"| {g.goal} | {g.setting} | {g.measured} | {g.target} | {'yes' if g.met else 'NO'} | {g.source} |"
              for g in goals]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.goals", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="result JSON files of python -m benchmarks")
    args = parser.parse_args(argv)
    goals: List[GoalResult] = []
    for path in args.results:
        try:
            goals += goals_of(json.loads(path.read_text()), path.name)
        except (OSError, ValueError, KeyError) as exc:
            print(f"benchmarks.goals: cannot read {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    print(markdown(goals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
