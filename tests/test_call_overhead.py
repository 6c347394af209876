"""benchmarks.call_overhead: what it times and in which order (times themselves are not asserted)."""
from __future__ import annotations

from benchmarks import call_overhead
from benchmarks.implementations import DENSE, OURS, TORCHVISION
from benchmarks.shapes import FWD, FWD_BWD
from benchmarks.timing import TIMING_ROUNDS


def test_every_implementation_and_pass_gets_a_time_per_call_and_a_ratio_to_torchvision():
    rows = call_overhead.measure("cpu", quick=True)
    assert [(r.pass_name, r.impl) for r in rows] == [(p, i) for p in (FWD, FWD_BWD) for i in (OURS, TORCHVISION, DENSE)]
    assert all(r.us_per_call > 0 for r in rows)
    for pass_name in (FWD, FWD_BWD):
        times = {r.impl: r.us_per_call for r in rows if r.pass_name == pass_name}
        for r in rows:
            if r.pass_name == pass_name:
                assert r.vs_torchvision == times[TORCHVISION] / r.us_per_call
    table = call_overhead.markdown(rows, "cpu")
    assert "| fwd+bwd | ours |" in table and "n1_c8_8x8" in table


def test_the_slices_of_the_implementations_are_interleaved(monkeypatch):
    """Round by round, a slice of each implementation in turn, after a warm-up of each: a drift of the
    machine's speed then weighs on all alike."""
    calls = []

    def record(prepare, step, device, count):
        calls.append((step, count))
        return 1.0

    monkeypatch.setattr(call_overhead, "_slice_us", record)
    call_overhead.measure("cpu", quick=True)
    impls = len(call_overhead.IMPLS)
    per_pass = impls * (1 + TIMING_ROUNDS)
    assert len(calls) == 2 * per_pass
    for first in (0, per_pass):
        steps = [step for step, _ in calls[first:first + impls]]
        assert len(set(steps)) == impls  # the warm-ups, one per implementation
        timed = calls[first + impls:first + per_pass]
        assert [step for step, _ in timed] == steps * TIMING_ROUNDS


def test_the_command_prints_the_table_and_writes_it_where_asked(tmp_path, capsys):
    assert call_overhead.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("cpu-call-overhead-*.md")
    table = written.read_text()
    assert table.startswith("## Cost of a call on cpu") and "| fwd | torchvision |" in table
    assert table.strip() in capsys.readouterr().out
