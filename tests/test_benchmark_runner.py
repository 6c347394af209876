"""The benchmark runner's bookkeeping, on a tiny CPU case (timings are not judged here)."""
from __future__ import annotations

import os

import torch

from benchmarks import runner
from benchmarks.shapes import FWD, FWD_BWD, Case


def test_variants_get_their_rows_and_the_settings_are_restored(monkeypatch):
    monkeypatch.setenv(runner.ALGORITHM_ENV, "implicit_gemm")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # so that the runner's default does not outlive the test
    case = Case("tiny", n=1, c_in=4, h=5, w=5, dtypes={"cpu": ("fp32",)})
    settings = runner.TimingSettings(warmup=1, warmup_s=0.0, min_repeats=2, max_repeats=2, target_s=0.0)
    impls = [runner.OURS, runner.OURS_COLUMNS, runner.OURS_DETERMINISTIC, runner.TORCHVISION]
    rows = runner._measure_case_dtype(torch.device("cpu"), case, "fp32", impls, settings,
                                      runner.tf32_state(), skipped=[])
    passes = {(r["impl"], r["pass"]) for r in rows if r["status"] == "ok"}
    assert passes == {(runner.OURS, FWD), (runner.OURS, FWD_BWD), (runner.OURS_COLUMNS, FWD),
                      (runner.OURS_DETERMINISTIC, FWD_BWD), (runner.TORCHVISION, FWD), (runner.TORCHVISION, FWD_BWD)}
    for row in rows:
        if row["impl"] != runner.TORCHVISION:
            assert row["max_abs_diff_vs_torchvision"] < 1e-4, row
    assert os.environ[runner.ALGORITHM_ENV] == "implicit_gemm"
    assert not torch.are_deterministic_algorithms_enabled()


def test_reports_name_the_commit_the_caller_gives(monkeypatch):
    """A GPU machine's copy of the tree may carry stale git metadata: the caller's revision wins."""
    monkeypatch.setenv(runner.GIT_REVISION_ENV, "abc1234")
    assert runner.machine_info("cpu")["git"] == "abc1234"
    monkeypatch.delenv(runner.GIT_REVISION_ENV)
    assert runner.machine_info("cpu")["git"] != "abc1234"
