"""benchmarks/resuming_pytest.py: a test that kills its pytest process, or leaves its CUDA context lost,
costs that test only; every other test runs once, and the failures of a process that died are still
shown."""
from __future__ import annotations

import textwrap
import threading

from benchmarks import resuming_pytest

PLANTED = textwrap.dedent("""
    import os
    import signal

    def ran(name):
        with open(os.environ["RAN_LOG"], "a") as log:
            log.write(name + "\\n")

    def test_1_passes():
        ran("1")

    def test_2_fails():
        ran("2")
        assert False, "planted failure"

    def test_3_segfaults():
        ran("3")
        os.kill(os.getpid(), signal.SIGSEGV)

    def test_4_passes():
        ran("4")

    def test_5_exits_as_a_timeout_does():
        ran("5")
        os._exit(1)

    def test_6_passes():
        ran("6")

    def test_7_loses_the_cuda_context():
        ran("7")
        os.environ["PLANTED_LOST"] = "1"

    def test_8_dies_in_the_device_synchronisation():
        ran("8")
        os.environ["PLANTED_DIES_IN_SYNC"] = "1"

    def test_9_passes():
        ran("9")
""")

# The device check of the plugin, replaced: the context counts as lost once test_7 has run in this process,
# and the process dies in the check once test_8 has.
CONFTEST = textwrap.dedent("""
    import os

    import benchmarks.resuming_pytest as plugin

    def planted_context_error():
        if os.environ.get("PLANTED_DIES_IN_SYNC"):
            os._exit(1)
        return "CUDA error: an illegal memory access was encountered" if os.environ.get("PLANTED_LOST") else None

    plugin.cuda_context_error = planted_context_error

    def pytest_sessionfinish(session):
        if os.environ.get("PLANTED_DIES_AT_THE_END"):
            os._exit(9)
""")


def run(tmp_path, monkeypatch, source):
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "test_planted.py").write_text(source)
    (tmp_path / "planted" / "conftest.py").write_text(CONFTEST)
    monkeypatch.setenv("RAN_LOG", str(tmp_path / "ran.log"))
    # --rootdir: node ids relative to the planted folder, wherever pytest runs from
    status = resuming_pytest.main([str(tmp_path / "planted"), "-q", "-p", "no:cacheprovider",
                                   f"--rootdir={tmp_path / 'planted'}"])
    return status, (tmp_path / "ran.log").read_text().split()


def test_every_test_runs_once_around_crashes_and_a_lost_context(tmp_path, monkeypatch, capfd):
    status, ran = run(tmp_path, monkeypatch, PLANTED)
    assert status == 1
    assert ran == [str(i) for i in range(1, 10)]
    out = capfd.readouterr().out
    assert out.count("ended early") == 4  # after 3, 5, 7 and 8: five rounds
    casualties = out[out.index("tests that killed their process"):].splitlines()[1:]
    assert [line.split("::")[1].split(":")[0] for line in casualties] == [
        "test_3_segfaults", "test_5_exits_as_a_timeout_does", "test_7_loses_the_cuda_context",
        "test_8_dies_in_the_device_synchronisation"]
    assert "died in it (exit -11)" in casualties[0] and "died in it (exit 1)" in casualties[1]
    assert "illegal memory access" in casualties[2] and "died in it (exit 1)" in casualties[3]
    # test_2's report died with the first process; the journal still had it
    assert "resuming_pytest: FAILED test_planted.py::test_2_fails\ncall:" in out and "planted failure" in out
    # the round stopped after test_7 printed its session's summary as usual
    assert "Interrupted: resuming_pytest: the CUDA context is lost after" in out


def without(source: str, *markers: str) -> str:
    return "\n".join(line for line in source.splitlines() if not any(m in line for m in markers))


def test_a_clean_run_is_one_round_and_passes(tmp_path, monkeypatch, capfd):
    passing = without(PLANTED, "assert False", "os.kill", "os._exit", "PLANTED_")
    status, ran = run(tmp_path, monkeypatch, passing)
    assert status == 0 and ran == [str(i) for i in range(1, 10)]
    out = capfd.readouterr().out
    assert "ended early" not in out and "killed their process" not in out


def test_a_failure_without_a_crash_fails_the_run_in_one_round(tmp_path, monkeypatch, capfd):
    failing = PLANTED.split("def test_3_segfaults")[0]
    status, ran = run(tmp_path, monkeypatch, failing)
    assert status == 1 and ran == ["1", "2"]
    out = capfd.readouterr().out
    assert "ended early" not in out and "resuming_pytest: FAILED" not in out and "planted failure" in out


def test_a_death_outside_any_test_is_reported_and_the_run_resumes(tmp_path, monkeypatch, capfd):
    """A process that dies after its tests (here in pytest_sessionfinish, every round) ran them all: the
    next round finds none left, and both deaths are named."""
    monkeypatch.setenv("PLANTED_DIES_AT_THE_END", "1")
    status, ran = run(tmp_path, monkeypatch, PLANTED.split("def test_3_segfaults")[0])
    assert status == 1 and ran == ["1", "2"]
    out = capfd.readouterr().out
    assert "pytest exited 9 outside any test, after test_planted.py::test_2_fails" in out
    assert "pytest exited 9 outside any test, in a round that ran no test" in out
    assert "resuming_pytest: FAILED test_planted.py::test_2_fails" in out  # never printed by its session


def test_a_stop_from_outside_reports_the_journal(tmp_path, monkeypatch, capfd):
    """SIGTERM to the runner (gpu_check's timeout) while a test runs: the runner stops its pytest and
    still prints the failures that pytest had not, and names the test it stopped in."""
    stopped = PLANTED.split("def test_3_segfaults")[0] + textwrap.dedent("""
        def test_3_outlives_the_budget():
            ran("3")
            os.kill(os.getppid(), signal.SIGTERM)
            import time
            time.sleep(60)
    """)
    status, ran = run(tmp_path, monkeypatch, stopped)
    assert status == 1 and ran == ["1", "2", "3"]
    out = capfd.readouterr().out
    assert "resuming_pytest: FAILED test_planted.py::test_2_fails" in out
    assert "stopped from outside (SIGTERM or Ctrl-C) in test_planted.py::test_3_outlives_the_budget" in out


def test_the_runner_runs_from_a_thread_and_reads_past_a_cut_line(tmp_path, monkeypatch, capfd):
    """Off the main thread (where no signal handler may be set) the runner still runs; a journal line
    cut by a death mid-write is skipped, and the next record still reads."""
    result = {}
    worker = threading.Thread(target=lambda: result.update(run=run(tmp_path, monkeypatch, PLANTED.split(
        "def test_3_segfaults")[0])))
    worker.start()
    worker.join()
    assert result["run"] == (1, ["1", "2"])
    journal = tmp_path / "journal"
    journal.write_text('\n{"event": "start", "nodeid": "a"}\n\n{"event": "end", "nod\n{"event": "start", "nodeid": "b"}\n')
    assert [(e.nodeid, e.finished) for e in resuming_pytest.read_journal(journal)] == [("a", False), ("b", False)]
