"""benchmarks.goals: the goals judged from result files, against the tables the runner wrote for them
(benchmarks/results/*.md) and hand-made results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import goals
from benchmarks.implementations import OURS, OURS_CHANNELS_LAST, OURS_WGMMA, TORCHVISION
from benchmarks.report import markdown_report
from benchmarks.shapes import FWD

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def judged(name: str) -> dict:
    return {g.goal: g for g in goals.goals_of(json.loads((RESULTS / name).read_text()), name)}


def test_the_h200_run_of_session_2_meets_neither_gpu_goal():
    """cuda-20261128-165750.md: fp32 forward geomean 0.66x; bf16 N32 forward 2.543 ms, 5.89% of the roofline."""
    result = judged("cuda-20261128-165750.json")
    fp32 = result["cuda fp32 fwd vs torchvision"]
    assert (fp32.measured, fp32.met) == ("0.66x", False) and "TF32 off" in fp32.setting
    bf16 = result["cuda bf16 fwd, n32_c256_56x56, share of 790 TFLOP/s"]
    assert (bf16.measured, bf16.met) == ("5.9%", False)
    # 118.38 GFLOP at 40% of 790 TFLOP/s: 0.3746 ms
    assert bf16.target == ">= 40% (<= 0.375 ms)" and bf16.setting.startswith("2.543 ms, 1.60x torchvision")


def test_the_cpu_run_meets_both_cpu_goals():
    """cpu-20261129-152754.md: 8.05x forward, 17.73x forward+backward."""
    result = judged("cpu-20261129-152754.json")
    assert [(g.measured, g.met) for g in result.values()] == [("8.05x", True), ("17.73x", True)]


def hand_made(tf32: bool, fp32_geomean: float, bf16_ms: float, cases: int = 4) -> dict:
    flops = 118_380_036_096
    ceiling = 790e12
    row = {"case": goals.GOAL_CASE, "dtype": "bf16", "pass": FWD, "status": "ok", "flops": flops}
    return {
        "meta": {"device_type": "cuda", "tf32": {"torch.backends.cuda.matmul.allow_tf32": tf32},
                 "ceilings": {"flops_per_s": {"bf16": ceiling}}},
        "geomean": [{"impl": OURS, "dtype": "fp32", "pass": FWD, "cases": cases,
                     "geomean_speedup_vs_torchvision": fp32_geomean}],
        "rows": [dict(row, impl=OURS, median_ms=bf16_ms, roofline_pct=100 * flops / (bf16_ms * 1e-3) / ceiling),
                 dict(row, impl=TORCHVISION, median_ms=4 * bf16_ms)],
    }


def test_a_partial_run_meets_no_speed_up_goal():
    """cuda-compile-20261128-165843.json timed one case of four (--cases n8_c256_14x14)."""
    fp32 = judged("cuda-compile-20261128-165843.json")["cuda fp32 fwd vs torchvision"]
    assert not fp32.met and fp32.setting.startswith("geomean of 1 cases (partial run: of 4)")
    assert not goals.goals_of(hand_made(tf32=True, fp32_geomean=9.0, bf16_ms=0.1, cases=3), "c")[0].met


def test_goals_met_and_missed_at_their_edges():
    met = goals.goals_of(hand_made(tf32=True, fp32_geomean=3.0, bf16_ms=0.37), "a")
    assert [g.met for g in met] == [True, True]
    assert "TF32 on" in met[0].setting and met[1].setting == "0.370 ms, 4.00x torchvision"
    assert met[1].goal == "cuda bf16 fwd, n32_c256_56x56, share of 790 TFLOP/s"
    missed = goals.goals_of(hand_made(tf32=False, fp32_geomean=2.99, bf16_ms=0.38), "b")
    assert [g.met for g in missed] == [False, False]


def test_command_prints_the_table_and_fails_on_an_unreadable_file(capsys, tmp_path):
    assert goals.main([str(RESULTS / "cpu-20261129-152754.json")]) == 0
    assert "| cpu fp32 fwd+bwd vs torchvision | geomean of 3 cases | 17.73x | >= 10x | yes |" in capsys.readouterr().out
    (tmp_path / "broken.json").write_text("{")
    assert goals.main([str(tmp_path / "broken.json")]) == 2


def test_every_report_has_the_goals_of_its_run():
    """The runner's markdown (printed and stored with each run) judges the goals of that run."""
    report = markdown_report(json.loads((RESULTS / "cpu-20261129-155306.json").read_text()))
    assert "| cpu fp32 fwd+bwd vs torchvision | geomean of 3 cases | 17.96x | >= 10x | yes | this run |" in report


@pytest.mark.parametrize("impl", [OURS_CHANNELS_LAST, OURS_WGMMA])
def test_the_roofline_goal_is_judged_for_the_other_rows_too_where_the_run_has_them(impl):
    """ours[channels_last] (no layout conversion in the op) and ours[implicit_gemm_wgmma] (the opt-in
    Hopper kernel) get a line of their own each, judged the same way."""
    result = hand_made(tf32=False, fp32_geomean=1.0, bf16_ms=0.40)
    fast = dict(result["rows"][0], impl=impl, median_ms=0.35)
    fast["roofline_pct"] = 100 * fast["flops"] / (0.35e-3) / 790e12
    result["rows"].append(fast)
    lines = {g.goal: g for g in goals.goals_of(result, "d")}
    assert not lines["cuda bf16 fwd, n32_c256_56x56, share of 790 TFLOP/s"].met
    other = lines[f"cuda bf16 fwd {impl}, n32_c256_56x56, share of 790 TFLOP/s"]
    assert other.met and other.measured == "42.8%"


def test_the_fp32_goal_is_judged_for_the_wgmma_row_too_where_the_run_has_it():
    """ours[implicit_gemm_wgmma] runs fp32 too (split TF32 with TF32 off): its geometric mean gets a
    line of its own, judged the same way; a CPU run has no such row to judge."""
    result = hand_made(tf32=False, fp32_geomean=1.5, bf16_ms=0.40)
    result["geomean"].append(dict(result["geomean"][0], impl=OURS_WGMMA, geomean_speedup_vs_torchvision=3.2))
    lines = {g.goal: g for g in goals.goals_of(result, "e")}
    assert not lines["cuda fp32 fwd vs torchvision"].met
    wgmma = lines[f"cuda fp32 fwd {OURS_WGMMA} vs torchvision"]
    assert wgmma.met and wgmma.measured == "3.20x" and "TF32 off" in wgmma.setting
    cpu = dict(result, meta=dict(result["meta"], device_type="cpu"))
    assert not any(OURS_WGMMA in g.goal for g in goals.goals_of(cpu, "f"))
