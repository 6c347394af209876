"""benchmarks/gpu_check_steps.sh, the steps of gpu_check.sh: a slow step is cut where it would eat the time kept
for a later required step, which then runs; a step that is run or skipped gives its reservation back; a step
cut by its own cap fails, one cut by the budget is unfinished (TIME)."""
from __future__ import annotations

import subprocess
from pathlib import Path

STEPS = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check_steps.sh"


def run_steps(tmp_path: Path, budget_s: int, script: str) -> tuple[dict[str, tuple[str, str]], str]:
    """Runs `script` (calls of step/gpu_step/skip_step) after sourcing the steps with a budget of budget_s
    seconds and steps of at least 1 s; returns each step's (status, exit status) from the summary, and
    what the script printed last (its own echo of the variables it wants seen)."""
    summary = tmp_path / "summary.txt"
    program = f"""
set -uo pipefail
BUDGET_S={budget_s}
MIN_STEP_S=1
START=$SECONDS
SUMMARY={summary}
FAILED=(); OPTIONAL_FAILED=(); SKIPPED_REQUIRED=(); NO_GPU_STEPS=""
LAST_RC=0; LAST_STATUS=OK
source {STEPS}
LOG={tmp_path / "steps.log"}
{script}
"""
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in summary.read_text().splitlines()]
    return {row[0]: (row[1], row[2]) for row in rows}, done.stdout.strip().splitlines()[-1]


def test_a_slow_step_is_cut_where_it_would_take_a_later_steps_reserved_time(tmp_path):
    steps, last = run_steps(tmp_path, 6, """
RESERVED_S=([bench]=3)
step tests "$LOG" 20 1 "sleep 30"
step bench "$LOG" 20 1 "sleep 1; echo measured"
echo "skipped: ${SKIPPED_REQUIRED[*]}; failed: ${#FAILED[@]}"
""")
    # tests: at most 6 - 3 s, far below its cap of 20 s, so unfinished rather than failed
    assert steps["tests"] == ("TIME", "124")
    assert steps["bench"] == ("OK", "0")
    assert last == "skipped: tests; failed: 0"
    assert "measured" in (tmp_path / "steps.log").read_text()
    assert "3s kept for later steps" in (tmp_path / "steps.log").read_text()


def test_without_a_reservation_the_slow_step_takes_the_budget_and_the_next_is_skipped(tmp_path):
    steps, last = run_steps(tmp_path, 4, """
step tests "$LOG" 20 1 "sleep 30"
step bench "$LOG" 20 1 "echo measured"
echo "skipped: ${SKIPPED_REQUIRED[*]}"
""")
    assert steps["tests"] == ("TIME", "124")
    assert steps["bench"] == ("SKIP", "-")
    assert last == "skipped: tests bench"


def test_a_step_run_or_skipped_gives_its_reservation_back(tmp_path):
    steps, last = run_steps(tmp_path, 30, """
RESERVED_S=([memcheck]=10 [bench]=10 [later]=5)
skip_step memcheck "$LOG" 1 "compute-sanitizer not found"
step bench "$LOG" 20 1 "true"
echo "kept: $(reserved_total) ${!RESERVED_S[*]}"
""")
    assert steps["memcheck"] == ("SKIP", "-")
    assert steps["bench"] == ("OK", "0")
    assert last == "kept: 5 later"


def test_a_step_does_not_count_its_own_reservation_against_itself(tmp_path):
    steps, _ = run_steps(tmp_path, 5, """
RESERVED_S=([bench]=4)
step bench "$LOG" 20 1 "sleep 2"
""")
    assert steps["bench"] == ("OK", "0")


def test_a_step_cut_by_its_own_cap_fails_and_a_gpu_step_is_skipped_after_a_failed_build(tmp_path):
    steps, last = run_steps(tmp_path, 30, """
RESERVED_S=([bench]=5)
step smoke "$LOG" 1 1 "sleep 5"
NO_GPU_STEPS="the build failed"
gpu_step bench "$LOG" 20 1 "echo measured"
echo "failed: ${FAILED[*]} skipped: ${SKIPPED_REQUIRED[*]} reserved: ${#RESERVED_S[@]}"
""")
    assert steps["smoke"] == ("FAIL", "124")
    assert steps["bench"] == ("SKIP", "-")
    assert last == "failed: smoke skipped: bench reserved: 0"
