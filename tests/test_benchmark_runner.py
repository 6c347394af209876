"""The benchmark runner's bookkeeping, on a tiny CPU case (timings are not judged here)."""
from __future__ import annotations

import os

import pytest
import torch

from benchmarks import environment, implementations, profile_kernels, report, runner, shapes, timing
from benchmarks.implementations import (
    ALGORITHM_ENV,
    DENSE,
    ONNXRUNTIME,
    OURS,
    OURS_AUTOTUNE,
    OURS_CHANNELS_LAST,
    OURS_COLUMNS,
    OURS_DETERMINISTIC,
    OURS_SIMT,
    OURS_SYNC,
    OURS_WGMMA,
    OURS_WMMA,
    TORCHVISION,
)
from benchmarks.shapes import FWD, FWD_BWD, Case
from tests.benchmark_cases import TINY

SETTINGS = timing.TimingSettings(warmup=1, warmup_s=0.0, min_repeats=2, max_repeats=2, target_s=0.0)


def test_variants_get_their_rows_and_the_settings_are_restored(monkeypatch):
    monkeypatch.setenv(ALGORITHM_ENV, "implicit_gemm")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # so that the runner's default does not outlive the test
    impls = [OURS, OURS_COLUMNS, OURS_DETERMINISTIC, TORCHVISION]
    rows = runner._measure_case_dtype(torch.device("cpu"), TINY, "fp32", impls, SETTINGS,
                                      environment.tf32_state(), skipped=[])
    passes = {(r["impl"], r["pass"]) for r in rows if r["status"] == "ok"}
    assert passes == {(OURS, FWD), (OURS, FWD_BWD), (OURS_COLUMNS, FWD),
                      (OURS_DETERMINISTIC, FWD_BWD), (TORCHVISION, FWD), (TORCHVISION, FWD_BWD)}
    for row in rows:
        if row["impl"] != TORCHVISION:
            assert row["max_abs_diff_vs_torchvision"] < 1e-4, row
    assert os.environ[ALGORITHM_ENV] == "implicit_gemm"
    assert not torch.are_deterministic_algorithms_enabled()


def test_variants_run_under_their_own_forward_algorithm_and_determinism(monkeypatch):
    """Each variant's calls see its own RCM_FSAD_DEFORM_CONV_ALGO and torch determinism (the CPU ignores
    the algorithm, so only what the runner sets is checked here), and ours those of the caller."""
    import rcm_fsad_ops

    monkeypatch.delenv(ALGORITHM_ENV, raising=False)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    seen = {}

    def recording(*args, **kwargs):
        seen.setdefault(os.environ.get(ALGORITHM_ENV), set()).add(torch.are_deterministic_algorithms_enabled())
        return rcm_fsad_ops.deform_conv2d(*args, **kwargs)

    monkeypatch.setattr(implementations, "ours", lambda: recording)
    impls = [OURS, OURS_COLUMNS, OURS_AUTOTUNE, OURS_DETERMINISTIC]
    runner._measure_case_dtype(torch.device("cpu"), TINY, "fp32", impls, SETTINGS, environment.tf32_state(), skipped=[])
    assert seen == {None: {False, True}, "columns": {False}, "autotune": {False}}


def test_tensor_core_variants_are_timed_only_where_they_have_a_kernel_of_their_own(monkeypatch):
    """implicit_gemm_wmma, implicit_gemm_sync and implicit_gemm_simt differ from ours only where it takes
    tensor cores. In fp32 with TF32 off ours splits its operands over TF32 tensor cores, so
    implicit_gemm_simt (the CUDA-core kernel) and implicit_gemm_wgmma (which splits too, on wgmma, where
    its kernel runs) are timed, while the WMMA variants, which would time that same CUDA-core kernel under
    another name, are skipped with the reason; in fp64 all of them would time ours' own kernel. With TF32
    on and in 16-bit types all four are timed. The columns path and autotune always are."""
    monkeypatch.setattr(implementations, "wgmma_runs", lambda: True)
    impls = [OURS, OURS_WGMMA, OURS_WMMA, OURS_SYNC, OURS_SIMT,
             OURS_AUTOTUNE]
    skipped = []
    tf32_off = dict(environment.tf32_state(), **{"torch.backends.cuda.matmul.allow_tf32": False})
    rows = runner._measure_case_dtype(torch.device("cpu"), TINY, "fp32", impls, SETTINGS, tf32_off, skipped)
    assert {r["impl"] for r in rows} == {OURS, OURS_WGMMA, OURS_SIMT, OURS_AUTOTUNE}
    assert {s["impl"] for s in skipped} == {OURS_WMMA, OURS_SYNC}
    assert all(OURS_SIMT in s["reason"] for s in skipped)
    for impl in (OURS_WGMMA, OURS_WMMA, OURS_SYNC, OURS_SIMT):
        assert implementations.variant_applies(impl, "fp32", tf32_matmul=True)
        assert implementations.variant_applies(impl, "bf16", tf32_matmul=False)
        assert not implementations.variant_applies(impl, "fp64", tf32_matmul=True)
        assert "ours" in implementations.variant_skip_reason(impl, "fp64")
    for impl in (OURS_COLUMNS, OURS_AUTOTUNE):
        assert implementations.variant_applies(impl, "fp64", tf32_matmul=False)


def test_the_wgmma_variant_is_skipped_where_its_kernel_does_not_run(monkeypatch):
    """Where rcm_fsad_ops.info()["wgmma"] is false (no GPU; a GPU other than compute capability 9.0, a build
    without sm_90a, or RCM_FSAD_DISABLE_WGMMA=1) ours[implicit_gemm_wgmma] would time ours' default path
    under another name: it is skipped, with the reason."""
    monkeypatch.setattr(implementations, "wgmma_runs", lambda: False)
    skipped = []
    rows = runner._measure_case_dtype(torch.device("cpu"), TINY, "fp32", [OURS, OURS_WGMMA], SETTINGS,
                                      environment.tf32_state(), skipped)
    assert {r["impl"] for r in rows} == {OURS}
    assert [s["impl"] for s in skipped] == [OURS_WGMMA] and "info()['wgmma']" in skipped[0]["reason"]


def test_differences_are_reported_absolute_and_relative():
    """A bf16 gradient 4.0 off where its values reach 1290 reads as "4.0e+00 (3.1e-03)", not as 4.0 alone."""
    row = {"max_abs_diff_vs_torchvision": 4.0, "max_rel_diff_vs_torchvision": 4.0 / 1290}
    assert report.diff_text(row) == "4.0e+00 (3.1e-03)"
    assert report.diff_text({"max_abs_diff_vs_torchvision": None, "max_rel_diff_vs_torchvision": None}) == "–"
    table = report.markdown_table([dict(row, case="c", dtype="bf16", status="ok", impl=OURS, median_ms=1.0,
                                        speedup_vs_torchvision=1.5, gflops=1.0, gbps=1.0, **{"pass": FWD_BWD})],
                                  gpu=False)
    assert "| 4.0e+00 (3.1e-03) |" in table and "max abs (rel.) diff vs tv" in table


@pytest.fixture
def deterministic_warn_only():
    """torch.use_deterministic_algorithms(True, warn_only=True) for the test, the previous setting after it."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_the_callers_warn_only_survives_the_deterministic_variant(deterministic_warn_only, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # so that the runner's default does not outlive the test
    # ours under the caller's setting, then ours[deterministic] under strict determinism (warn_only off)
    rows = runner._measure_case_dtype(torch.device("cpu"), TINY, "fp32", [OURS, OURS_DETERMINISTIC],
                                      SETTINGS, environment.tf32_state(), skipped=[])
    assert {(r["impl"], r["status"]) for r in rows} == {(OURS, "ok"), (OURS_DETERMINISTIC, "ok")}
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()


def test_profiling_keeps_the_callers_warn_only(deterministic_warn_only, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # on the CPU the profile compares no variant of ours: ask for the deterministic one
    monkeypatch.setattr(profile_kernels, "compared_impls", lambda device_type: [OURS_DETERMINISTIC])
    records = profile_kernels.profile_case_dtype(torch.device("cpu"), TINY, "fp32", repeats=1)
    assert [(r["impl"], r["status"]) for r in records] == [(OURS_DETERMINISTIC, "ok")]
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()


def test_reports_name_the_commit_the_caller_gives(monkeypatch):
    """A GPU machine's copy of the tree may carry stale git metadata: the caller's revision wins."""
    monkeypatch.setenv(environment.GIT_REVISION_ENV, "abc1234")
    assert environment.machine_info("cpu")["git"] == "abc1234"
    monkeypatch.delenv(environment.GIT_REVISION_ENV)
    assert environment.machine_info("cpu")["git"] != "abc1234"


def test_reports_give_the_command_as_typed(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/repo/benchmarks/__main__.py", "--quick"])
    assert runner._command_line() == "python -m benchmarks --quick"
    monkeypatch.setattr("sys.argv", ["/repo/rcm_fsad_ops/__main__.py", "bench", "--quick"])
    assert runner._command_line() == "python -m rcm_fsad_ops bench --quick"


def _timed_row(impl: str, case: str, median_ms: float) -> dict:
    return {"device": "cpu", "case": case, "dtype": "fp32", "pass": FWD, "impl": impl, "status": "ok",
            "median_ms": median_ms, "flops": 1e9, "min_bytes": 5e5,
            "tf32": {"torch.backends.cuda.matmul.allow_tf32": False}}


def test_speedups_throughput_roofline_and_their_geometric_mean_on_hand_made_rows():
    """Speed-up = torchvision's time / ours (8/4 = 2 and 16/2 = 8, geometric mean 4); GFLOP/s = FLOPs /
    time; roofline = the larger of FLOPs / peak and bytes / bandwidth over the time (1 ms of compute,
    0.5 ms of memory in 4 ms: 25%, compute-bound)."""
    rows = [_timed_row(TORCHVISION, "a", 8.0), _timed_row(OURS, "a", 4.0),
            _timed_row(TORCHVISION, "b", 16.0), _timed_row(OURS, "b", 2.0)]
    report.finish_rows(rows, {"flops_per_s": {"fp32": 1e12}, "bytes_per_s": 1e9})
    ours_a, ours_b = rows[1], rows[3]
    assert ours_a["speedup_vs_torchvision"] == pytest.approx(2.0)
    assert ours_b["speedup_vs_torchvision"] == pytest.approx(8.0)
    assert ours_a["gflops"] == pytest.approx(250.0)
    assert ours_a["roofline_pct"] == pytest.approx(25.0) and ours_a["roofline_bound"] == "compute"
    (geomean,) = report.geomean_speedups(rows)
    assert (geomean["impl"], geomean["cases"]) == (OURS, 2)
    assert geomean["geomean_speedup_vs_torchvision"] == pytest.approx(4.0)


def test_extra_cases_run_only_when_named_and_stay_out_of_the_geometric_means():
    """The depthwise cases are not among a device's default cases, run when named, and their rows, however
    fast, leave the geometric mean (and so the goals) to the stage shapes."""
    assert not {case.name for case in shapes.EXTRA_CASES} & {case.name for case in shapes.cases_for("cpu")}
    extra = shapes.EXTRA_CASES[-1]
    assert shapes.cases_for("cpu", [extra.name, "n8_c64_56x56"]) == [shapes.CASES_BY_NAME["n8_c64_56x56"], extra]
    rows = [_timed_row(TORCHVISION, "a", 8.0), _timed_row(OURS, "a", 4.0),
            _timed_row(TORCHVISION, extra.name, 100.0), _timed_row(OURS, extra.name, 1.0)]
    report.finish_rows(rows, None)
    assert rows[3]["speedup_vs_torchvision"] == pytest.approx(100.0)
    (geomean,) = report.geomean_speedups(rows)
    assert geomean["cases"] == 1 and geomean["geomean_speedup_vs_torchvision"] == pytest.approx(2.0)


def test_the_dense_conv2d_is_a_deformable_one_without_offsets():
    """The yardstick row computes what torchvision's deform_conv2d computes with zero offsets and a mask
    of ones (groups, stride, padding and dilation included), whatever offset and mask it is handed."""
    import torchvision.ops

    torch.manual_seed(0)
    x, weight, bias = torch.randn(2, 6, 9, 8), torch.randn(4, 3, 3, 2), torch.randn(4)
    kwargs = {"stride": (2, 1), "padding": (1, 2), "dilation": (2, 1)}
    out_h, out_w = 4, 11
    offset, mask = torch.randn(2, 12, out_h, out_w), torch.rand(2, 6, out_h, out_w)
    got = implementations.dense_conv2d()(x, offset, weight, bias, mask=mask, **kwargs)
    expected = torchvision.ops.deform_conv2d(x, torch.zeros_like(offset), weight, bias, mask=torch.ones_like(mask),
                                             **kwargs)
    torch.testing.assert_close(got, expected)


def test_the_dense_conv2d_is_timed_beside_ours_without_a_parity_check_or_a_geometric_mean():
    """Its rows are timed in both passes and report no difference from torchvision; ours' rows get their time
    over its time (4/2 = 2 on hand-made rows), and it stays out of the geometric means."""
    rows = runner._measure_case_dtype(torch.device("cpu"), TINY, "fp32", [OURS, TORCHVISION, DENSE],
                                      SETTINGS, environment.tf32_state(), skipped=[])
    dense = [r for r in rows if r["impl"] == DENSE]
    assert {r["pass"] for r in dense} == {FWD, FWD_BWD}
    assert all(r["status"] == "ok" and r["max_abs_diff_vs_torchvision"] is None for r in dense), dense
    rows = [_timed_row(TORCHVISION, "a", 8.0), _timed_row(OURS, "a", 4.0),
            _timed_row(DENSE, "a", 2.0)]
    report.finish_rows(rows, None)
    assert rows[1]["time_vs_dense"] == pytest.approx(2.0)
    assert [g["impl"] for g in report.geomean_speedups(rows)] == [OURS]
    assert "| a | fp32 | fwd | 2.00× |" in report.markdown_ours_column(rows, "time_vs_dense", "ours / dense conv2d")


def test_onnxruntime_is_timed_forward_only_on_the_exported_op_and_skipped_in_bfloat16():
    """Its one row (forward) reports its difference from torchvision, which is that of a float32 kernel;
    bfloat16, which its CPU DeformConv lacks, is skipped with the reason."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    skipped = []
    rows = runner._measure_case_dtype(torch.device("cpu"), TINY, "fp32", [TORCHVISION, ONNXRUNTIME],
                                      SETTINGS, environment.tf32_state(), skipped=skipped)
    (row,) = [r for r in rows if r["impl"] == ONNXRUNTIME]
    assert row["pass"] == FWD and row["status"] == "ok", row
    assert row["max_abs_diff_vs_torchvision"] < 1e-5
    bf16 = Case("tiny_bf16", n=1, c_in=4, h=5, w=5, dtypes={"cpu": ("bf16",)})
    rows = runner._measure_case_dtype(torch.device("cpu"), bf16, "bf16", [ONNXRUNTIME], SETTINGS,
                                      environment.tf32_state(), skipped=skipped)
    assert rows == [] and skipped[-1]["impl"] == ONNXRUNTIME
    assert skipped[-1]["reason"].endswith("runs fp16, fp32, fp64 only")


def test_ours_speedup_over_onnxruntime_is_its_time_over_ours():
    rows = [_timed_row(TORCHVISION, "a", 8.0), _timed_row(OURS, "a", 4.0),
            _timed_row(ONNXRUNTIME, "a", 6.0)]
    report.finish_rows(rows, None)
    assert rows[1]["speedup_vs_onnxruntime"] == pytest.approx(1.5)
    assert "| a | fp32 | fwd | 1.50× |" in report.markdown_ours_column(rows, "speedup_vs_onnxruntime", "x")


def test_torchvision_without_a_kernel_or_an_autocast_policy_for_a_dtype_runs_on_float32_casts():
    """torchvision's CPU deform_conv2d takes no bfloat16, under autocast neither: the runner then casts the
    arguments to float32 and the results back, as its user would, and says so in the row's note."""
    import torchvision.ops

    tensors = {k: v.bfloat16() for k, v in TINY.make_inputs("cpu", torch.float32).items()}
    fn, note, results = implementations.pick_torchvision(tensors, TINY)
    assert note == "cast->fp32"
    expected = torchvision.ops.deform_conv2d(*(tensors[k].float() for k in ("input", "offset", "weight", "bias")),
                                             mask=tensors["mask"].float(), **TINY.kwargs())
    assert results["output"].dtype == torch.bfloat16
    assert torch.equal(results["output"], expected.bfloat16())
    assert results["grad_input"].dtype == torch.bfloat16


def test_the_parity_check_measures_ours_against_torchvision(monkeypatch):
    """An ours that is off by exactly 1 everywhere is reported 1 off in its forward row."""
    import rcm_fsad_ops

    monkeypatch.setattr(implementations, "ours",
                        lambda: lambda *args, **kwargs: rcm_fsad_ops.deform_conv2d(*args, **kwargs) + 1)
    rows = runner._measure_case_dtype(torch.device("cpu"), TINY, "fp32", [OURS, TORCHVISION], SETTINGS,
                                      environment.tf32_state(), skipped=[])
    (forward,) = [r for r in rows if (r["impl"], r["pass"]) == (OURS, FWD)]
    assert forward["max_abs_diff_vs_torchvision"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("algorithm", [None, "columns"])
def test_cuda_report_says_which_forward_path_ours_took(algorithm):
    """``ours`` runs whatever RCM_FSAD_DEFORM_CONV_ALGO the caller's environment holds: a CUDA report says so."""
    machine = {"gpu_name": "GPU", "torch": "t", "torchvision": "v", "rcm_fsad_ops": "r", "git": "g",
               "platform": "p", "cpu_model": "c", "cpu_count": 1, "torch_threads": 1}
    meta = {"device": "cuda", "device_type": "cuda", "date": "d", "quick": False, "machine": machine,
            "tf32": environment.tf32_state(), "forward_algorithm": algorithm, "ceilings": None, "cases": {},
            "notes": [], "timing": {"method": "m", "settings": {}}}
    text = report.markdown_report({"meta": meta, "rows": [], "geomean": [], "skipped": []})
    expected = algorithm or "(unset: the default path)"
    assert f"- ours: {ALGORITHM_ENV}={expected} " in text


def test_timed_calls_of_the_implementations_are_interleaved(monkeypatch):
    """After the warm-ups, each implementation's timed calls come in TIMING_ROUNDS slices taken in turn, so
    that the machine's drift weighs on all alike: the sequence of calls switches between ours and
    ours[columns] at least twice a round (once block by block)."""
    import rcm_fsad_ops

    monkeypatch.delenv(ALGORITHM_ENV, raising=False)
    calls = []

    def recording(*args, **kwargs):
        calls.append(os.environ.get(ALGORITHM_ENV))
        return rcm_fsad_ops.deform_conv2d(*args, **kwargs)

    monkeypatch.setattr(implementations, "ours", lambda: recording)
    settings = timing.TimingSettings(warmup=1, warmup_s=0.0, min_repeats=10, max_repeats=10, target_s=0.0)
    rows = runner._measure_case_dtype(torch.device("cpu"), TINY, "fp32", [OURS, OURS_COLUMNS],
                                      settings, environment.tf32_state(), skipped=[])
    assert all(r["status"] == "ok" and r["repeats"] == 10 for r in rows), rows
    switches = sum(a != b for a, b in zip(calls, calls[1:]))
    assert switches >= 2 * timing.TIMING_ROUNDS - 1, calls


def test_each_slice_of_cpu_calls_starts_after_a_pause(monkeypatch):
    """So that the threads of whatever ran before, still spinning, do not share the cores with its calls."""
    events = []
    monkeypatch.setattr(timing.time, "sleep", lambda seconds: events.append(("sleep", seconds)))
    timed = timing.Timing(lambda: None, lambda: events.append("call"), torch.device("cpu"), SETTINGS)
    events.clear()
    timed.time_calls(3)
    assert events == [("sleep", timing.CPU_SETTLE_S), "call", "call", "call"]


@pytest.mark.parametrize("pass_name", [FWD, FWD_BWD])
def test_ours_weight_cache_serves_the_forward_rows_and_not_the_training_ones(pass_name):
    """The forward times inference, where a weight stays as it is; forward+backward times training, where each
    step writes the weight and bumps its version, which the timed step's preparation does in its place."""
    import rcm_fsad_ops

    rcm_fsad_ops.clear_cpu_weight_cache()
    prepare, step = timing.make_step(implementations.ours(), TINY.make_inputs("cpu", torch.float32), TINY, pass_name)
    for _ in range(4):
        prepare()
        step()
    kept = rcm_fsad_ops.info()["cpu_weight_cache"]
    rcm_fsad_ops.clear_cpu_weight_cache()
    assert kept["hits"] == (2 if pass_name == FWD else 0), kept


@pytest.mark.parametrize("repeats", [1, 2, 5, 7, 30])
def test_repeats_are_spread_evenly_over_the_rounds(repeats):
    shares = [timing.round_share(repeats, i) for i in range(timing.TIMING_ROUNDS)]
    assert sum(shares) == repeats and max(shares) - min(shares) <= 1, shares


def test_the_channels_last_variant_gets_channels_last_activations(monkeypatch):
    """ours[channels_last] is called with channels_last input, offset, mask and weight (and backward with a
    channels_last grad_output), ours with the contiguous tensors; both match torchvision."""
    import rcm_fsad_ops

    layouts = set()

    def recording(input, offset, weight, bias=None, mask=None, **kwargs):
        layouts.add(tuple(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
                          for t in (input, offset, mask, weight)))
        return rcm_fsad_ops.deform_conv2d(input, offset, weight, bias, mask=mask, **kwargs)

    monkeypatch.setattr(implementations, "ours", lambda: recording)
    impls = [OURS, OURS_CHANNELS_LAST, TORCHVISION]
    rows = runner._measure_case_dtype(torch.device("cpu"), TINY, "fp32", impls, SETTINGS, environment.tf32_state(),
                                      skipped=[])
    assert layouts == {(False,) * 4, (True,) * 4}
    variant = implementations.variant_of(OURS_CHANNELS_LAST, implementations.current_variant())
    grad_output = implementations.in_layout({"grad_output": torch.zeros(1, 2, 3, 4)}, variant)["grad_output"]
    assert grad_output.is_contiguous(memory_format=torch.channels_last) and not grad_output.is_contiguous()
    ours = [r for r in rows if r["impl"] != TORCHVISION and r["status"] == "ok"]
    assert {(r["impl"], r["pass"]) for r in ours} == {
        (OURS, FWD), (OURS, FWD_BWD), (OURS_CHANNELS_LAST, FWD),
        (OURS_CHANNELS_LAST, FWD_BWD)}
    assert all(r["max_abs_diff_vs_torchvision"] < 1e-4 for r in ours), ours


def test_the_channels_last_variant_keeps_the_callers_algorithm_and_determinism(monkeypatch):
    """It must differ from ours in the layout alone: a caller's RCM_FSAD_DEFORM_CONV_ALGO and determinism hold
    for it as for ours, unlike the algorithm variants, which set their own."""
    monkeypatch.setenv(ALGORITHM_ENV, "columns")
    default = implementations.current_variant()
    assert implementations.variant_of(OURS_CHANNELS_LAST, default) == default._replace(channels_last=True)
    assert implementations.variant_of(OURS_AUTOTUNE, default).algorithm == "autotune"
    assert implementations.variant_of(OURS, default) == default
