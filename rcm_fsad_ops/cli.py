"""Command line: ``rcm-fsad`` / ``python -m rcm_fsad_ops``.

  info    how the package was built and what this process can run
  demo    deform_conv2d parity against torchvision on random inputs, then the benchmark table
  bench   the benchmark table (ours vs torchvision vs the eager reference): ``python -m benchmarks``

demo and bench take the options of ``python -m benchmarks`` (``rcm-fsad bench --help`` lists them) and
exit as it does: 0 when every measurement ran, 1 when some failed (or, for demo, the parity check did),
2 when nothing could run. The benchmark suite lives in the repository checkout (benchmarks/, next to
rcm_fsad_ops/), not in an installed package: both need the checkout on the path, as ``make`` sets it up.
"""
from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Optional, Sequence

BENCHMARK_COMMANDS = ("demo", "bench")


def _benchmark_runner() -> Optional[ModuleType]:
    """benchmarks.runner of the repository checkout, or None (with a message) when it is not importable."""
    try:
        from benchmarks import runner
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", "benchmarks.runner"):
            raise  # the suite is there but one of its own imports failed: that error says more
        print("rcm-fsad: the benchmark suite (benchmarks/) is not importable. It is part of the repository "
              "checkout, not of the installed package: run from the checkout after `make build` (which puts "
              "the checkout on the venv's path), e.g. `make bench` or `python -m benchmarks`.", file=sys.stderr)
        return None
    return runner


def main(argv: Optional[Sequence[str]] = None, prog: str = "rcm-fsad") -> int:
    """prog: the command as the user typed it, for usage lines (``python -m rcm_fsad_ops`` from __main__)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, compiled backends, CUDA archs, threads")
    # The benchmark runner parses the rest of the command line itself (its --help included).
    commands.add_parser("demo", help="parity check, then the benchmark table", add_help=False)
    commands.add_parser("bench", help="benchmark table, as python -m benchmarks", add_help=False)
    args, rest = parser.parse_known_args(argv)

    if args.command not in BENCHMARK_COMMANDS:
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from rcm_fsad_ops.info import format_info, info

        print(format_info(info()))
        return 0

    runner = _benchmark_runner()
    if runner is None:
        return 2
    bench_parser = runner.build_parser(prog=f"{parser.prog} {args.command}")
    if args.command == "demo":
        bench_parser.description = ("Check deform_conv2d against torchvision (float64, CPU), then: "
                                    + bench_parser.description)
    bench_args = bench_parser.parse_args(rest)  # before the parity check, so that bad options fail at once
    if args.command == "demo":
        from rcm_fsad_ops.demo import parity_report

        if not parity_report():
            return 1
    return runner.run_command(bench_args)
