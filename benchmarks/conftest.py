"""pytest configuration of the benchmark suite.

The benchmarks are collected only when pytest is pointed at this folder (``pytest benchmarks
--benchmark-only``, or a file/node inside it) or asked for benchmarks with ``--benchmark-only``.
A plain ``pytest`` from the repository root (or ``pytest tests``) leaves them out, so the main test
run never spends minutes timing kernels.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def _targets_this_folder(config) -> bool:
    for arg in config.args:
        path = Path(str(arg).split("::", 1)[0])
        if not path.is_absolute():
            path = Path(config.invocation_params.dir) / path
        try:
            path.resolve().relative_to(HERE)
            return True
        except ValueError:
            continue
    return False


def _benchmark_only(config) -> bool:
    try:
        return bool(config.getoption("benchmark_only"))
    except ValueError:  # pytest-benchmark not installed
        return False


def pytest_ignore_collect(collection_path, config):
    if collection_path.name.startswith("test_") and collection_path.suffix == ".py":
        if not (_targets_this_folder(config) or _benchmark_only(config)):
            return True
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: a CUDA case (the test skips itself without a CUDA device)")
