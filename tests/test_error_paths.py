"""benchmarks/error_paths.py: bad arguments raise in a process of their own; a case that kills or hangs
its process is reported while the cases after it still run; a child that fails by itself is not taken
for a crash."""
from __future__ import annotations

import subprocess

from benchmarks import error_paths

NAMES = list(error_paths.CASES)


def test_every_bad_argument_raises_in_a_fresh_process_on_the_cpu(capsys):
    assert error_paths.main(["--devices", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(NAMES)
    assert all(" raised RuntimeError: deform_conv2d" in line for line in lines), lines


def fake_children(monkeypatch, outcomes):
    """subprocess.run replaced: the i-th child asked for cases `asked` returns outcomes[i](asked), a
    (returncode, stdout, stderr) or an exception to raise; returns the list of cases each child was asked."""
    asked_of = []

    def run(cmd, **kwargs):
        asked = cmd[cmd.index("--child") + 2:]
        asked_of.append(asked)
        outcome = outcomes[len(asked_of) - 1](asked)
        if isinstance(outcome, BaseException):
            raise outcome
        return subprocess.CompletedProcess(cmd, *outcome)

    monkeypatch.setattr(error_paths.subprocess, "run", run)
    return asked_of


def all_raise(asked):
    return 0, "".join(f"{n} raised RuntimeError: later\n" for n in asked), ""


def test_a_crash_is_reported_and_the_cases_after_it_still_run(monkeypatch, capsys):
    """The first child dies (SIGSEGV) after the first case's line; the second, started after the case
    it died in, runs the rest."""
    asked_of = fake_children(monkeypatch, [lambda asked: (-11, f"{asked[0]} raised RuntimeError: one\n", "Fatal\n"),
                                           all_raise])
    assert error_paths.main(["--devices", "cpu"]) == 2
    assert asked_of == [NAMES, NAMES[2:]]
    out = capsys.readouterr().out.splitlines()
    assert "CRASHED: signal 11 Fatal" in out[1] and NAMES[1] in out[1]
    assert all("raised RuntimeError" in line for i, line in enumerate(out[:-1]) if i != 1)
    assert out[-1] == f"first crash: cpu {NAMES[1]}"


def test_a_hang_is_reported_as_a_crash_and_the_rest_still_run(monkeypatch, capsys):
    asked_of = fake_children(monkeypatch, [lambda asked: subprocess.TimeoutExpired("child", 60), all_raise])
    assert error_paths.main(["--devices", "cpu"]) == 2
    assert asked_of == [NAMES, NAMES[1:]]
    out = capsys.readouterr().out.splitlines()
    assert "HUNG" in out[0] and out[-1] == f"first crash: cpu {NAMES[0]}"


def test_a_child_that_fails_by_itself_is_no_crash(monkeypatch, capsys):
    """An extension that does not import fails every case once, without the crash diagnosis."""
    asked_of = fake_children(monkeypatch, [lambda asked: (1, "", "ImportError: no _C\n")])
    assert error_paths.main(["--devices", "cpu"]) == 1
    assert asked_of == [NAMES]
    out = capsys.readouterr().out.splitlines()
    assert all("CHILD FAILED: exit 1 ImportError: no _C" in line for line in out), out


def test_no_error_or_another_exception_type_fails(monkeypatch):
    fake_children(monkeypatch, [lambda asked: (0, "".join(f"{n} NO ERROR\n" for n in asked), "")])
    assert error_paths.main(["--devices", "cpu"]) == 1
    fake_children(monkeypatch, [lambda asked: (0, "".join(f"{n} raised IndexError: x\n" for n in asked), "")])
    assert error_paths.main(["--devices", "cpu"]) == 1
