"""Per-kernel profile of deform_conv2d: where the time of each implementation goes.

``python -m benchmarks`` times whole calls; this says which kernels the time is spent in. For each case,
dtype, implementation (ours, on CUDA each of ``implementations.CUDA_VARIANTS``, and torchvision the way the
runner picks it) and pass (forward under ``torch.no_grad()``, forward+backward), it

- warms up (WARMUP calls),
- times ``--repeats`` calls without the profiler (wall ms per call: ``time.perf_counter`` with the
  device synchronised after each call, so not inflated by the profiler's own overhead; unlike the
  runner's device times, it includes the host's work and launch latency),
- profiles ``--repeats`` more calls under ``torch.profiler.profile`` and reports, per kernel, the
  device time per call, launches per call and share of the total device time.

On CUDA the "kernels" are the device-side events (kernels, memcpy, memset), timed by CUPTI; wall minus
device time is what the calls spend outside kernels (CPU dispatch, launch latency, gaps). On CPU they are
the operators, by self CPU time summed over threads (intra-op workers included).

    python -m benchmarks.profile_kernels --device cuda --repeats 5 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.environment import machine_info, tf32_set_to, tf32_state
from benchmarks.implementations import (
    TORCHVISION,
    compared_impls,
    current_variant,
    error_text,
    in_layout,
    ours,
    pick_torchvision,
    select,
    variant_applies,
    variant_of,
)
from benchmarks.runner import resolve_devices
from benchmarks.shapes import DTYPE_NAMES, Case, cases_for, dtype_of
from benchmarks.timing import make_step

DEFAULT_CASES = ("n32_c256_56x56", "n8_c64_56x56")
DEFAULT_DTYPES = ("fp32", "bf16")
WARMUP = 2
TOP_K = 8
NAME_WIDTH = 96  # wide enough for our kernels with their template arguments (dtype, tile width)


def short_name(name: str, width: int = NAME_WIDTH) -> str:
    """A kernel name for a table. Returns ``name`` when it fits in ``width``; else the name without a
    leading ``void``, the parameter list and template arguments nested deeper than one level (``<…>``),
    cut to ``width`` characters with a trailing ``…``."""
    if len(name) <= width:
        return name
    text = name.replace("(anonymous namespace)", "{anon}")  # its "(" is not a parameter list
    text = text[len("void "):] if text.startswith("void ") else text
    pieces: List[str] = []
    depth = 0
    for ch in text:
        if ch == "(" and depth == 0:
            break
        if ch == "<":
            depth += 1
            pieces.append("<" if depth == 1 else "<…>" if depth == 2 else "")
        elif ch == ">" and depth:
            depth -= 1
            pieces.append(">" if depth == 0 else "")
        else:
            pieces.append(ch if depth <= 1 else "")
    text = "".join(pieces).strip()
    return text if len(text) <= width else text[:width - 1] + "…"


def _kernel_rows(averages, device_type: str, repeats: int) -> List[dict]:
    """Per-call rows of the profiled events with positive time (device events on CUDA, CPU operators by
    self time on CPU), most time first. Returns dicts with name, short_name, ms_per_call,
    launches_per_call and share (of the listed rows' total, so the shares sum to 1)."""
    rows = []
    for event in averages:
        # record_function ranges span kernels and ops: their time would count twice. (Torch 2.4's profiler
        # does not mark them: there a range counts, with its self time on the CPU and as a row on CUDA.)
        if getattr(event, "is_user_annotation", False):
            continue
        if device_type == "cuda":
            if event.device_type == DeviceType.CPU:
                continue
            us = event.self_device_time_total
        else:
            if event.device_type != DeviceType.CPU:
                continue
            us = event.self_cpu_time_total
        if us > 0:
            rows.append({"name": event.key, "short_name": short_name(event.key), "ms_per_call": us / 1e3 / repeats,
                         "launches_per_call": event.count / repeats})
    total = sum(row["ms_per_call"] for row in rows)
    for row in rows:
        row["share"] = row["ms_per_call"] / total
    rows.sort(key=lambda row: row["ms_per_call"], reverse=True)
    return rows


def top_rows(kernels: List[dict], k: int = TOP_K) -> List[dict]:
    """The ``k`` rows with the most time, plus one row that sums up the rest (when there is a rest).
    Returns table rows; their shares sum to 1 like those of ``kernels``."""
    rest = kernels[k:]
    if not rest:
        return list(kernels)
    summary = {"short_name": f"({len(rest)} more)", "ms_per_call": sum(r["ms_per_call"] for r in rest),
               "launches_per_call": sum(r["launches_per_call"] for r in rest), "share": sum(r["share"] for r in rest)}
    return kernels[:k] + [summary]


def profile_calls(fn: Callable, tensors: Dict[str, torch.Tensor], case: Case, pass_name: str,
                  device: torch.device, repeats: int) -> dict:
    """Warm up, time ``repeats`` plain calls, then profile ``repeats`` calls of one pass.

    Returns {"wall_ms": per call, "device_ms": kernel time per call, "kernels": per-kernel rows}.
    """
    prepare, step = make_step(fn, tensors, case, pass_name)
    is_cuda = device.type == "cuda"

    def calls(count: int) -> None:
        for _ in range(count):
            prepare()
            step()
            if is_cuda:  # per call: each call's launch latency is part of its wall time
                torch.cuda.synchronize(device)

    calls(WARMUP)
    start = time.perf_counter()
    calls(repeats)
    wall_ms = (time.perf_counter() - start) * 1e3 / repeats
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if is_cuda else [])
    with profile(activities=activities) as prof:
        calls(repeats)
    kernels = _kernel_rows(prof.key_averages(), device.type, repeats)
    if not kernels:
        raise RuntimeError(f"the profiler recorded no {'device events (is CUPTI available?)' if is_cuda else 'ops'}")
    return {"wall_ms": wall_ms, "device_ms": sum(row["ms_per_call"] for row in kernels), "kernels": kernels}


def profile_case_dtype(device: torch.device, case: Case, dtype_name: str, repeats: int) -> List[dict]:
    """Profile every implementation and pass of one case in one dtype. Returns one record per
    (implementation, pass), with status "ok" or "error" (and the error's text)."""
    tensors = case.make_inputs(str(device), dtype_of(dtype_name))
    default = current_variant()
    records: List[dict] = []
    try:
        tf32_matmul = tf32_state()["torch.backends.cuda.matmul.allow_tf32"]
        for impl in compared_impls(device.type):
            if not variant_applies(impl, dtype_name, tf32_matmul):
                continue
            variant = variant_of(impl, default)
            select(variant)
            for pass_name in variant.passes:
                record = {"case": case.name, "dtype": dtype_name, "impl": impl, "impl_note": "", "pass": pass_name,
                          "repeats": repeats, "status": "ok"}
                try:
                    if impl == TORCHVISION:  # one forward+backward to pick the way it runs: cheap next to a profile
                        fn, record["impl_note"], _ = pick_torchvision(tensors, case)
                    else:
                        fn = ours()
                    record.update(profile_calls(fn, in_layout(tensors, variant), case, pass_name, device, repeats))
                except Exception as exc:  # noqa: BLE001  (reported in its table; the other profiles still run)
                    record.update(status="error", error=error_text(exc))
                print(markdown_record(record, device.type), flush=True)
                records.append(record)
    finally:
        select(default)
        del tensors
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return records


def markdown_record(record: dict, device_type: str) -> str:
    """One (case, dtype, impl, pass) as a heading line and a table of its TOP_K kernels plus the rest.
    Returns the markdown text."""
    impl = record["impl"] + (f" ({record['impl_note']})" if record["impl_note"] else "")
    title = f"#### {record['case']} · {record['dtype']} · {record['pass']} · {impl}"
    if record["status"] != "ok":
        return f"{title}\n\nERROR {record['error']}\n"
    what, count = ("kernel", "launches/call") if device_type == "cuda" else ("op (self CPU)", "calls/call")
    lines = [f"{title} — {'device' if device_type == 'cuda' else 'self CPU'} {record['device_ms']:.3f} ms/call, "
             f"wall {record['wall_ms']:.3f} ms/call ({record['repeats']} calls)", "",
             f"| {what} | ms/call | {count} | share |", "|---|---|---|---|"]
    for row in top_rows(record["kernels"]):
        lines.append(f"| `{row['short_name']}` | {row['ms_per_call']:.4f} | {row['launches_per_call']:g} | "
                     f"{100 * row['share']:.1f}% |")
    return "\n".join(lines) + "\n"


def _header(meta: dict) -> str:
    """The report's heading and the conditions of the run. Returns markdown."""
    machine = meta["machine"]
    where = machine.get("gpu_name") or f"{machine['cpu_model']}, {machine['torch_threads']} threads"
    lines = [f"## deform_conv2d kernel profile on {meta['device']} — {where}", "",
             f"- date {meta['date']}, torch {machine['torch']}, torchvision {machine.get('torchvision')}, "
             f"rcm_fsad_ops {machine.get('rcm_fsad_ops')} (git {machine.get('git')}); TF32 off",
             f"- {meta['method']}"]
    lines += [f"- {name}: {text}" for name, text in meta["cases"].items()]
    return "\n".join(lines) + "\n"


def run(device_name: str, case_names: Iterable[str], dtype_names: Iterable[str], repeats: int,
        out_dir: Optional[Path] = None) -> dict:
    """Profile the cases on one device, printing each table as it is done. Returns {"meta", "profiles"}
    and, when ``out_dir`` is given, "paths" of the JSON and markdown written there
    (``profile-<device>-<YYYYMMDD-HHMMSS>``). Raises ValueError for unknown cases or when none runs
    on the device, RuntimeError for a device that is not available."""
    device = torch.device(resolve_devices(device_name)[0])
    case_names, dtype_names = list(case_names), list(dtype_names)
    selected = cases_for(device.type, case_names)
    if not selected:
        raise ValueError(f"none of the cases {case_names} runs on {device.type} (see benchmarks/shapes.py)")
    for name in case_names:
        if name not in {case.name for case in selected}:
            print(f"# skipping {name}: not a {device.type} case", flush=True)
    if device.type == "cuda":
        measured = ("device synchronised after each call; per kernel: device time of each CUDA kernel, memcpy "
                    "and memset (CUPTI); wall - device = time outside kernels")
    else:
        measured = "per operator: self CPU time, summed over threads (so it can exceed the wall time)"
    meta = {
        "device": str(device),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(str(device)),
        "method": (f"{WARMUP} warm-up calls, wall = perf_counter over {repeats} unprofiled calls, then "
                   f"{repeats} calls under torch.profiler; {measured}"),
        "cases": {case.name: case.describe() for case in selected},
        "repeats": repeats,
        "warmup": WARMUP,
    }
    header = _header(meta)
    print(header, flush=True)
    profiles: List[dict] = []
    with tf32_set_to(False):  # as in the benchmark: fp32 is IEEE fp32 on every side
        for case in selected:
            for dtype_name in (d for d in case.dtypes[device.type] if d in dtype_names):
                profiles += profile_case_dtype(device, case, dtype_name, repeats)
    result = {"meta": meta, "profiles": profiles}
    if out_dir is not None:
        result["paths"] = _write(result, header, Path(out_dir), device.type)
        print(f"wrote {result['paths']['json']} and {result['paths']['markdown']}", flush=True)
    return result


def _write(result: dict, header: str, out_dir: Path, device_type: str) -> Dict[str, str]:
    """Write the result as JSON (full kernel names) and markdown. Returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"profile-{device_type}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2, default=str))
    md_path.write_text("\n".join([header] + [markdown_record(r, device_type) for r in result["profiles"]]))
    return {"json": str(json_path), "markdown": str(md_path)}


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.profile_kernels``. Returns the parser."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_kernels",
                                     description="Per-kernel profile of deform_conv2d (ours, its CUDA variants, "
                                                 "torchvision) under torch.profiler.")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"], help="device (default: cuda)")
    parser.add_argument("--cases", nargs="+", metavar="NAME", default=list(DEFAULT_CASES),
                        help=f"cases of benchmarks/shapes.py (default: {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--dtypes", nargs="+", metavar="DTYPE", default=list(DEFAULT_DTYPES),
                        choices=sorted(set(DTYPE_NAMES.values())),
                        help=f"dtypes, where the case runs in them (default: {' '.join(DEFAULT_DTYPES)})")
    parser.add_argument("--repeats", type=int, default=10, help="calls timed and profiled (default: 10)")
    parser.add_argument("--out", metavar="DIR", help="also write JSON and markdown there")
    return parser


def main(argv: Optional[Iterable[str]] = None) -> int:
    """Returns 0 when every profile ran, 1 when some failed, 2 for bad arguments or a missing device."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.repeats < 1:
        print("profile_kernels: --repeats must be at least 1", file=sys.stderr)
        return 2
    try:
        result = run(args.device, args.cases, args.dtypes, args.repeats, Path(args.out) if args.out else None)
    except (RuntimeError, ValueError, ImportError) as exc:
        print(f"profile_kernels: {exc}", file=sys.stderr)
        return 2
    failed = [p for p in result["profiles"] if p["status"] != "ok"]
    if failed:
        print(f"profile_kernels: {len(failed)} profile(s) failed (see the tables above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
