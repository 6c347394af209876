"""Command line: ``rcm-fsad`` / ``python -m rcm_fsad_ops``.

  info    how the package was built and what this process can run
  demo    deform_conv2d parity against torchvision on random inputs, then the benchmark table
  bench   the benchmark table (ours vs torchvision vs the eager reference)
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence


def _add_bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--quick", action="store_true", help="few repeats, for a smoke run")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON and markdown results")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="rcm-fsad", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, compiled backends, CUDA archs, threads")
    _add_bench_args(commands.add_parser("demo", help="parity check, then the benchmark table"))
    _add_bench_args(commands.add_parser("bench", help="benchmark table"))
    args = parser.parse_args(argv)

    if args.command == "info":
        from rcm_fsad_ops.info import format_info, info

        print(format_info(info()))
        return 0
    if args.command == "demo":
        from rcm_fsad_ops.demo import parity_report

        ok = parity_report()
        if not ok:
            return 1
    from benchmarks.runner import run

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    run(devices, quick=args.quick, out_dir=args.out)
    return 0
