"""benchmarks/error_paths.py: bad arguments raise in a process of their own, and a case that kills its
process is reported while the cases after it still run."""
from __future__ import annotations

import subprocess

from benchmarks import error_paths


def test_every_bad_argument_raises_in_a_fresh_process_on_the_cpu(capsys):
    assert error_paths.main(["--devices", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(error_paths.CASES)
    assert all(" raised RuntimeError: deform_conv2d" in line for line in lines), lines


def test_a_crash_is_reported_and_the_cases_after_it_still_run(monkeypatch, capsys):
    """The first child dies (SIGSEGV) after the first case's line; the second child, started after the
    case it died in, runs the rest."""
    names = list(error_paths.CASES)
    children = []

    def fake_run(cmd, **kwargs):
        asked = cmd[cmd.index("--child") + 2:]
        children.append(asked)
        if len(children) == 1:
            return subprocess.CompletedProcess(cmd, -11, f"{asked[0]} raised RuntimeError: one\n", "Fatal\n")
        return subprocess.CompletedProcess(cmd, 0, "".join(f"{n} raised RuntimeError: later\n" for n in asked), "")

    monkeypatch.setattr(error_paths.subprocess, "run", fake_run)
    assert error_paths.main(["--devices", "cpu"]) == 2
    assert children == [names, names[2:]]
    out = capsys.readouterr().out.splitlines()
    assert "CRASHED: signal 11 Fatal" in out[1] and names[1] in out[1]
    assert all("raised RuntimeError" in line for i, line in enumerate(out[:-1]) if i != 1)
    assert out[-1] == f"first crash: cpu {names[1]}"


def test_a_case_that_does_not_raise_fails(monkeypatch):
    def fake_run(cmd, **kwargs):
        asked = cmd[cmd.index("--child") + 2:]
        return subprocess.CompletedProcess(cmd, 0, "".join(f"{n} NO ERROR\n" for n in asked), "")

    monkeypatch.setattr(error_paths.subprocess, "run", fake_run)
    assert error_paths.main(["--devices", "cpu"]) == 1
