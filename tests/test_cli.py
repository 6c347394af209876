"""The command line (rcm_fsad_ops/cli.py): ``bench`` and ``demo`` take the benchmark runner's options and
exit with its codes. Timings are not judged; the runs use a tiny case."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import environment, implementations
from benchmarks.implementations import DENSE, ONNXRUNTIME, OURS, OURS_CHANNELS_LAST, REFERENCE, TORCHVISION
from rcm_fsad_ops import cli

ROOT = Path(__file__).resolve().parent.parent
# What `python -m benchmarks --help` offers (benchmarks/runner.py build_parser).
RUNNER_OPTIONS = ("--device", "--quick", "--out", "--no-reference", "--compile", "--tf32", "--cases", "--dtypes",
                  "--no-write")


@pytest.mark.parametrize("command", ["bench", "demo"])
def test_help_lists_the_runners_options(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: rcm-fsad {command} ")
    for option in RUNNER_OPTIONS:
        assert option in text, option


def test_bench_runs_the_runner_with_its_options(tiny_case, tmp_path, capsys):
    code = cli.main(["bench", "--device", "cpu", "--cases", "tiny", "--quick", "--no-reference",
                     "--out", str(tmp_path)])
    assert code == 0
    (json_path,) = tmp_path.glob("cpu-*.json")
    result = json.loads(json_path.read_text())
    assert list(result["meta"]["cases"]) == ["tiny"]
    assert result["meta"]["quick"] is True
    assert REFERENCE not in result["meta"]["impls"]
    assert {(r["impl"], r["status"]) for r in result["rows"]} == {
        (OURS, "ok"), (OURS_CHANNELS_LAST, "ok"), (TORCHVISION, "ok"), (ONNXRUNTIME, "ok"),
        (DENSE, "ok")}
    assert "| tiny |" in capsys.readouterr().out


@pytest.fixture
def tf32_switches_odd():
    """The two TF32 switches set unlike each other, as a caller may have them, and reset after."""
    before = environment.tf32_state()
    with environment.tf32_set_to(True):
        torch.backends.cudnn.allow_tf32 = False
        yield environment.tf32_state()
    assert environment.tf32_state() == before


@pytest.mark.parametrize("tf32", [False, True])
def test_bench_leaves_the_tf32_switches_as_it_found_them(tf32, tiny_case, tf32_switches_odd, tmp_path):
    """--tf32 or not, the run sets both switches alike for itself and gives the caller's back."""
    options = ["--tf32"] if tf32 else []
    code = cli.main(["bench", "--device", "cpu", "--cases", "tiny", "--quick", "--no-reference",
                     "--out", str(tmp_path), *options])
    assert code == 0
    (json_path,) = tmp_path.glob("cpu-*.json")
    assert set(json.loads(json_path.read_text())["meta"]["tf32"].values()) == {tf32}
    assert environment.tf32_state() == tf32_switches_odd


def test_bench_exits_1_when_a_measurement_fails(tiny_case, tmp_path, monkeypatch, capsys):
    def broken():
        raise RuntimeError("no kernel today")

    monkeypatch.setattr(implementations, "ours", broken)
    code = cli.main(["bench", "--device", "cpu", "--cases", "tiny", "--quick", "--no-reference", "--no-write",
                     "--out", str(tmp_path)])
    assert code == 1
    assert "measurement(s) failed" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # --no-write reached the runner


def test_bench_unknown_case_exits_2(capsys):
    assert cli.main(["bench", "--device", "cpu", "--cases", "no_such_case", "--no-write"]) == 2
    assert "no_such_case" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_bench_on_cuda_without_a_gpu_exits_2_without_a_traceback():
    done = subprocess.run([sys.executable, "-m", "rcm_fsad_ops", "bench", "--device", "cuda", "--no-write"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "torch.cuda.is_available() is False" in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_names_the_command_as_typed():
    """python -m rcm_fsad_ops says so in its usage lines (the rcm-fsad script exists only once the package
    is pip-installed)."""
    done = subprocess.run([sys.executable, "-m", "rcm_fsad_ops", "bench", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m rcm_fsad_ops bench "), done.stdout[:200]


def test_demo_rejects_a_bad_option_before_the_parity_check(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--no-such-option"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "--no-such-option" in captured.err
    assert "deform_conv2d vs torchvision" not in captured.out


def test_demo_checks_parity_then_benchmarks(tiny_case, capsys):
    assert cli.main(["demo", "--device", "cpu", "--cases", "tiny", "--quick", "--no-reference", "--no-write"]) == 0
    out = capsys.readouterr().out
    parity = out.index("worst difference")
    assert "OK" in out[parity:out.index("\n", parity)]
    assert out.index("# deform_conv2d benchmark on cpu") > parity


def test_demo_exits_1_on_a_parity_mismatch_without_benchmarking(tiny_case, monkeypatch, capsys):
    """An op 1e-6 off torchvision (above the 1e-9 bar) fails the demo's parity check: exit 1, no table."""
    from rcm_fsad_ops import demo

    real = demo.deform_conv2d
    monkeypatch.setattr(demo, "deform_conv2d", lambda *args, **kwargs: real(*args, **kwargs) + 1e-6)
    assert cli.main(["demo", "--device", "cpu", "--cases", "tiny", "--quick", "--no-reference", "--no-write"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "# deform_conv2d benchmark" not in out


def test_without_the_benchmark_suite_bench_says_where_it_lives(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # what an installed package without the checkout sees
    assert cli.main(["bench", "--help"]) == 2
    err = capsys.readouterr().err
    assert "benchmarks/" in err and "checkout" in err


def test_info_rejects_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["info", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --device cpu" in capsys.readouterr().err
