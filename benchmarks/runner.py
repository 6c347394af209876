"""Side-by-side benchmark of deform_conv2d: ours vs torchvision vs the eager reference (SPEC section 7), on the
CPU also vs onnxruntime's DeformConv, with a dense conv2d of the same shape as the yardstick of what the
sampling costs (the implementations: benchmarks.implementations).

Everything runs in one process on the same inputs: for each device, case and dtype, each
implementation is first checked against torchvision (max abs difference of the output, and for the
forward+backward pass of the output and all gradients, and the largest difference relative to the
largest value of its tensor; reported, never fatal), then timed (benchmarks.timing: warm-up, then
every implementation's timed calls interleaved in rounds; the median):

  forward          ``fn(...)`` under ``torch.no_grad()``
  forward+backward ``fn(...).backward(grad_output)`` with input, offset, weight, mask and bias all
                   requiring grad (their ``.grad`` is reset to None outside the timed region)

The TF32 switches (``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32``) are
set once per run, so they are the same for every implementation; default off, so fp32 means float32's
accuracy: IEEE fp32 for torchvision's GEMM, and for ``ours`` on CUDA the mma.sync kernel on operands split
in two TF32 parts (three TF32 MMAs a product, its error tested against float32's).

Each device's rows, geometric means and goals go to ``<out>/<device>-<stamp>.json`` and ``.md``
(benchmarks.report), and the markdown to standard output.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from benchmarks import implementations
from benchmarks.environment import gpu_ceilings, machine_info, tf32_set_to
from benchmarks.implementations import (
    ALGORITHM_ENV,
    COMPILED,
    CUDA_VARIANTS,
    DENSE,
    IMPL_ORDER,
    ONNXRUNTIME,
    ONNXRUNTIME_DTYPES,
    OURS,
    OURS_AUTOTUNE,
    OURS_CHANNELS_LAST,
    OURS_COLUMNS,
    OURS_DETERMINISTIC,
    OURS_SIMT,
    OURS_SYNC,
    OURS_WGMMA,
    OURS_WMMA,
    REFERENCE,
    TORCHVISION,
    Variant,
    call,
    compared_impls,
    current_variant,
    error_text,
    evaluate,
    in_layout,
    leaf_tensors,
    pick_torchvision,
    select,
    variant_applies,
    variant_of,
    variant_skip_reason,
)
from benchmarks.report import diff_text, finish_rows, geomean_speedups, markdown_report
from benchmarks.shapes import DTYPE_NAMES, FWD, FWD_BWD, PASSES, Case, cases_for, dtype_of
from benchmarks.timing import (
    CUDA_L2_FLUSH_BYTES,
    TIMING_ROUNDS,
    Timing,
    TimingSettings,
    make_step,
    round_share,
    timing_settings,
)

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results"

# The eager reference materialises several N * C_in * kh*kw * H_out*W_out intermediates (and keeps
# them for backward); above this many elements per intermediate it is skipped.
REFERENCE_MAX_ELEMENTS = 64 * 1024 * 1024


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
            row.update(status="error", error=error_text(exc))
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
        if impl == OURS_WGMMA and not implementations.wgmma_runs():
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
                functions[impl] = (implementations.ours(), "")
            elif impl == REFERENCE:
                functions[impl] = (implementations.reference(), "")
            elif impl == COMPILED:
                functions[impl] = (implementations.compiled_reference(), "")
            elif impl == DENSE:
                functions[impl] = (implementations.dense_conv2d(), "")
            elif impl == ONNXRUNTIME:
                functions[impl] = (implementations.onnxruntime_deform_conv(tensors, case), "")
        except Exception as exc:  # noqa: BLE001
            add_error_rows(impl, exc)

    default = current_variant()
    timings: List[Tuple[dict, Variant, Timing]] = []  # (row, its variant, its timing), in IMPL_ORDER
    shared_bytes = torch.cuda.memory_allocated(device) if is_cuda else 0  # the inputs and the expected results
    for impl in IMPL_ORDER:
        if impl not in functions:
            continue
        variant = variant_of(impl, default)
        select(variant)
        fn, note = functions[impl]
        try:
            inputs = in_layout(tensors, variant)
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
                        evaluated = {"output": call(fn, leaf_tensors(inputs, requires_grad=False), case)}
                else:
                    evaluated = evaluate(fn, inputs, case)
                    if is_cuda:
                        torch.cuda.synchronize(device)
                    first_fwd_bwd_ms[impl] = (time.perf_counter() - t0) * 1e3
                diffs = _differences(evaluated, expected)
                del evaluated
            except Exception as exc:  # noqa: BLE001
                parity_error = error_text(exc)
                try:  # the forward alone may still run: compare what can be compared, time both passes
                    with torch.no_grad():
                        output = call(fn, leaf_tensors(inputs, requires_grad=False), case)
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
                timing = Timing(*make_step(fn, inputs, case, pass_name), device, settings)
                if is_cuda:  # the inputs and this implementation's own (not the other timings' tensors)
                    row["peak_memory_mib"] = (torch.cuda.max_memory_allocated(device) - held_by_others) / 2**20
                timings.append((row, variant, timing))
            except Exception as exc:  # noqa: BLE001
                row.update(status="error", error=error_text(exc))
            rows.append(row)

    # Every implementation warmed up: their timed calls, in TIMING_ROUNDS rounds of a share of each.
    for round_index in range(TIMING_ROUNDS):
        for row, variant, timing in timings:
            if row["status"] != "ok":
                continue
            select(variant)
            try:
                timing.time_calls(round_share(timing.repeats, round_index))
            except Exception as exc:  # noqa: BLE001
                row.update(status="error", error=error_text(exc))
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
            diff = "" if row["max_abs_diff_vs_torchvision"] is None else f", max|Δ| vs tv {diff_text(row)}"
            _log(f"  {case.name:<16} {dtype_name:<5} {pass_name:<8} {impl:<18} "
                 f"{row['median_ms']:10.3f} ms ({row['repeats']} reps{extra}{diff})")
        else:
            _log(f"  {case.name:<16} {dtype_name:<5} {pass_name:<8} {impl:<18} ERROR {row['error']}")
    select(default)
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
                 "input, offset, weight, mask, bias requiring grad, the weight's version bumped before each call "
                 "(as by an optimiser's step, so that ours' CPU weight cache, which keeps the operands of a weight "
                 "seen twice at one version, serves the forward rows, as in inference, and not these)")

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
            finish_rows(rows, ceilings)
            result["rows"].extend(rows)
            result["geomean"] = geomean_speedups(result["rows"])
            if write:  # partial results survive an interrupted run
                _write(result, out_dir, stem)
    finish_rows(result["rows"], ceilings)
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

