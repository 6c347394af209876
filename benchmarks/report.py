"""The runner's results as numbers and tables (benchmarks.runner): each row's speed-ups, throughput and
roofline fraction, the geometric means over cases, and the markdown report."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

from benchmarks.goals import goals_of, markdown as goals_markdown
from benchmarks.implementations import ALGORITHM_ENV, DENSE, IMPL_ORDER, ONNXRUNTIME, OURS, TORCHVISION
from benchmarks.shapes import EXTRA_CASES, PASSES

EXTRA_CASE_NAMES = {case.name for case in EXTRA_CASES}


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


def finish_rows(rows: List[dict], ceilings: Optional[dict]) -> None:
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


def diff_text(row: dict) -> str:
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
            diff = "–" if row["impl"] == TORCHVISION else diff_text(row)
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

