"""Bad input must raise, never kill the process: each rejected-argument case of deform_conv2d, run in a
child process with the extension importable from the working directory, on each device.

    python benchmarks/error_paths.py [--devices cpu,cuda] [--label NAME]

One child runs the cases of a device in order, printing each result as it goes; where a case kills it,
the next child starts after that case, so one crash costs one process and every case is still tried.
Prints a line per case and exits 0 when every case raised, 1 when one returned without an error, 2 when
one crashed (the last line then names the first crash: ``first crash: DEVICE CASE``). benchmarks/
error_paths.sh runs it and, on a crash, looks into the toolchain.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Callable, Dict, List

CHILD_TIMEOUT_S = 120


def good_args(device: str) -> dict:
    import torch

    return dict(input=torch.randn(2, 4, 6, 6, device=device), offset=torch.zeros(2, 18, 6, 6, device=device),
                weight=torch.randn(5, 4, 3, 3, device=device), mask=torch.ones(2, 9, 6, 6, device=device),
                padding=1)


# name -> how it spoils good_args. The first three fail in the body of check_deform_conv2d_args (which
# crashed on the GPU machine of session 12), the others in its helpers check_rank4, check_float and
# check_pair (which raised there).
CASES: Dict[str, Callable[[dict], None]] = {
    "no_input_channels": lambda a: a.update(input=a["input"][:, :0]),
    "groups_do_not_divide": lambda a: a.update(weight=a["weight"][:, :3]),
    "empty_kernel": lambda a: a.update(weight=a["weight"][:, :, :0]),
    "rank": lambda a: a.update(input=a["input"][0]),
    "dtype": lambda a: a.update(weight=a["weight"].double()),
    "stride": lambda a: a.update(stride=(1, 0)),
}


def run_child(device: str, names: List[str]) -> None:
    """Runs the cases in order, one line each: 'NAME raised TYPE: message' or 'NAME NO ERROR'."""
    import rcm_fsad_ops

    for name in names:
        args = good_args(device)
        CASES[name](args)
        try:
            rcm_fsad_ops.deform_conv2d(**args)
            print(f"{name} NO ERROR", flush=True)
        except (RuntimeError, ValueError, TypeError) as exc:
            print(f"{name} raised {type(exc).__name__}: {str(exc).splitlines()[0][:110]}", flush=True)


def run_device(device: str, label: str) -> Dict[str, str]:
    """Every case on device, in as many children as crashes need: name -> 'raised ...', 'NO ERROR' or
    'CRASHED: ...'."""
    results: Dict[str, str] = {}
    names = list(CASES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    while names:
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", device, *names],
                               capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT_S)
        for line in child.stdout.splitlines():
            name, _, result = line.partition(" ")
            if name in names:
                results[name] = result
        names = [n for n in names if n not in results]
        if child.returncode != 0 and names:
            # The first case without a result is the one the child died in.
            how = f"signal {-child.returncode}" if child.returncode < 0 else f"exit {child.returncode}"
            tail = (child.stderr.strip().splitlines() or [""])[-1][:110]
            results[names.pop(0)] = f"CRASHED: {how} {tail}".rstrip()
        elif names:
            raise RuntimeError(f"the child on {device} stopped before {names} without an error:\n{child.stderr}")
    for name in CASES:
        print(f"{label:<14} {device:<5} {name:<22} {results[name]}", flush=True)
    return results


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default=None, help="comma-separated (default: cpu, and cuda where visible)")
    parser.add_argument("--label", default="in-place", help="the first column of each line (the build's name)")
    parser.add_argument("--child", nargs="+", metavar=("DEVICE", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child[0], args.child[1:])
        return 0
    if args.devices is None:
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = args.devices.split(",")
    first_crash = None
    no_error = False
    for device in devices:
        for name, result in run_device(device, args.label).items():
            no_error |= result == "NO ERROR"
            if result.startswith("CRASHED") and first_crash is None:
                first_crash = f"{device} {name}"
    if first_crash:
        print(f"first crash: {first_crash}")
        return 2
    return 1 if no_error else 0


if __name__ == "__main__":
    sys.exit(main())
