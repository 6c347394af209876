"""benchmarks.call_overhead: what it times, in which order, and what it reports (times themselves are not
asserted)."""
from __future__ import annotations

from benchmarks import call_overhead
from benchmarks.call_overhead import SliceTime
from benchmarks.implementations import DENSE, OURS, TORCHVISION
from benchmarks.shapes import FWD, FWD_BWD
from benchmarks.timing import TIMING_ROUNDS


def test_every_implementation_and_pass_is_timed_on_the_cpu():
    rows = call_overhead.measure("cpu", quick=True)
    assert [(r.pass_name, r.impl) for r in rows] == [(p, i) for p in (FWD, FWD_BWD) for i in (OURS, TORCHVISION, DENSE)]
    assert all(0 < r.host_us_per_call <= r.us_per_call for r in rows)


def test_slices_are_interleaved_and_reported_as_medians_and_ratios_to_torchvision(monkeypatch):
    """Round by round, a slice of each implementation in turn, after a warm-up slice of each: a drift of the
    machine's speed then weighs on all alike. Hand-made slice times: each implementation's round r takes
    its base time times (1, 5, 2, 4, 3)[r], so its median is 3 times the base, whatever the order."""
    calls = []
    base = {}

    def fake_slice(prepare, step, device, count):
        calls.append(step)
        if step not in base:  # the warm-ups come first: the first three steps of a pass are ours,
            base[step] = 10.0 * (1 + len(base) % 3)  # torchvision's and conv2d's, 10, 20 and 30 us
        r = sum(1 for s in calls if s is step) - 2  # this step's timed round, after its warm-up
        factor = (1, 5, 2, 4, 3)[r] if r >= 0 else 99
        return SliceTime(base[step] * factor / 2, base[step] * factor)

    monkeypatch.setattr(call_overhead, "_slice", fake_slice)
    rows = call_overhead.measure("cpu", quick=True)
    impls = len(call_overhead.IMPLS)
    per_pass = impls * (1 + TIMING_ROUNDS)
    assert len(calls) == 2 * per_pass
    for first in (0, per_pass):
        warmups = calls[first:first + impls]
        assert len(set(warmups)) == impls
        assert calls[first + impls:first + per_pass] == warmups * TIMING_ROUNDS
    expected = {OURS: 30.0, TORCHVISION: 60.0, DENSE: 90.0}
    for r in rows:
        assert (r.us_per_call, r.host_us_per_call) == (expected[r.impl], expected[r.impl] / 2)
        assert r.vs_torchvision == 60.0 / expected[r.impl]


def test_the_command_prints_the_table_and_writes_it_where_asked(tmp_path, capsys):
    assert call_overhead.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("cpu-call-overhead-*.md")
    table = written.read_text()
    assert table.startswith("## Cost of a call on cpu") and "| fwd | torchvision |" in table
    assert table.strip() in capsys.readouterr().out
