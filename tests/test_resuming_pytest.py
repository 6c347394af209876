"""benchmarks/resuming_pytest.py: a test that kills its pytest process, or leaves its CUDA context lost,
costs that test only; every other test runs once, and the failures of a process that died are still
shown."""
from __future__ import annotations

import textwrap

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

    def test_8_passes():
        ran("8")
""")

# The device check of the plugin, replaced: the context counts as lost once test_7 has run in this process.
CONFTEST = textwrap.dedent("""
    import os

    import benchmarks.resuming_pytest as plugin

    plugin.cuda_context_error = lambda: (
        "CUDA error: an illegal memory access was encountered" if os.environ.get("PLANTED_LOST") else None)
""")


def run(tmp_path, monkeypatch, source):
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "test_planted.py").write_text(source)
    (tmp_path / "planted" / "conftest.py").write_text(CONFTEST)
    monkeypatch.setenv("RAN_LOG", str(tmp_path / "ran.log"))
    status = resuming_pytest.main([str(tmp_path / "planted"), "-q", "-p", "no:cacheprovider"])
    return status, (tmp_path / "ran.log").read_text().split()


def test_every_test_runs_once_around_crashes_and_a_lost_context(tmp_path, monkeypatch, capfd):
    status, ran = run(tmp_path, monkeypatch, PLANTED)
    assert status == 1
    assert ran == [str(i) for i in range(1, 9)]
    out = capfd.readouterr().out
    assert out.count("ended early") == 3  # after 3, after 5, after 7: four rounds
    casualties = out[out.index("tests that killed their process"):].splitlines()[1:]
    assert [line.split("::")[1].split(":")[0] for line in casualties] == [
        "test_3_segfaults", "test_5_exits_as_a_timeout_does", "test_7_loses_the_cuda_context"]
    assert "died in it (exit -11)" in casualties[0] and "died in it (exit 1)" in casualties[1]
    assert "illegal memory access" in casualties[2]
    # test_2's report died with the first process; the journal still had it
    assert "resuming_pytest: FAILED" in out and "planted failure" in out
    # the round stopped after test_7 printed its session's summary as usual
    assert "Interrupted: resuming_pytest: the CUDA context is lost after" in out


def test_a_clean_run_is_one_round_and_passes(tmp_path, monkeypatch, capfd):
    passing = "\n".join(line for line in PLANTED.splitlines()
                        if "assert False" not in line and "os.kill" not in line and "os._exit" not in line
                        and "PLANTED_LOST" not in line)
    status, ran = run(tmp_path, monkeypatch, passing)
    assert status == 0 and ran == [str(i) for i in range(1, 9)]
    out = capfd.readouterr().out
    assert "ended early" not in out and "killed their process" not in out


def test_a_failure_without_a_crash_fails_the_run_in_one_round(tmp_path, monkeypatch, capfd):
    failing = PLANTED.split("def test_3_segfaults")[0]
    status, ran = run(tmp_path, monkeypatch, failing)
    assert status == 1 and ran == ["1", "2"]
    out = capfd.readouterr().out
    assert "ended early" not in out and "resuming_pytest: FAILED" not in out and "planted failure" in out
