"""Bad input must raise, never kill the process: each rejected-argument case of deform_conv2d, run in a
child process with the extension imported from a source tree (default: this checkout), on each device.

    python benchmarks/error_paths.py [--devices cpu,cuda] [--tree DIR] [--label NAME]

One child runs the cases of a device in order, printing each result as it goes; where a case kills it
(a signal) or hangs, the next child starts after that case, so every case is still tried. Prints a line
per case and exits 0 when every case raised one of ACCEPTED, 1 when one did not (no error, another
exception, or a child that failed on its own, e.g. an extension that does not import), 2 when one
crashed or hung (the last line then names the first: ``first crash: DEVICE CASE``).
benchmarks/error_paths.sh runs it and, on a crash, looks into the toolchain.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

CHILD_TIMEOUT_S = 60
ACCEPTED = ("RuntimeError", "ValueError", "TypeError")
REPO = Path(__file__).resolve().parent.parent


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
        except Exception as exc:  # noqa: BLE001 (the parent judges the type)
            print(f"{name} raised {type(exc).__name__}: {str(exc).splitlines()[0][:110]}", flush=True)


def run_device(device: str, tree: Path, label: str) -> Dict[str, str]:
    """Every case on device, in as many children as crashes and hangs need: name -> 'raised ...',
    'NO ERROR', 'CRASHED: ...', 'HUNG: ...' or 'CHILD FAILED: ...'."""
    results: Dict[str, str] = {}
    names = list(CASES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])))
    while names:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", device, *names]
        try:
            child = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree,
                                   timeout=CHILD_TIMEOUT_S)
            stdout, stderr, returncode = child.stdout, child.stderr, child.returncode
        except subprocess.TimeoutExpired as expired:
            stdout, stderr, returncode = expired.stdout or "", expired.stderr or "", None
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
            stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
        for line in stdout.splitlines():
            name, _, result = line.partition(" ")
            if name in names:
                results[name] = result
        names = [n for n in names if n not in results]
        if not names:
            break
        tail = (stderr.strip().splitlines() or [""])[-1][:110]
        # The first case without a result is the one the child died in, hung in, or never reached.
        if returncode is None:
            results[names.pop(0)] = f"HUNG: no result in {CHILD_TIMEOUT_S} s"
        elif returncode < 0:
            results[names.pop(0)] = f"CRASHED: signal {-returncode} {tail}".rstrip()
        else:  # the child failed by itself (an import error, say): the others would too
            for name in names:
                results[name] = f"CHILD FAILED: exit {returncode} {tail}".rstrip()
            names = []
    for name in CASES:
        print(f"{label:<14} {device:<5} {name:<22} {results[name]}", flush=True)
    return results


def raised_as_it_should(result: str) -> bool:
    return result.startswith("raised ") and result.split()[1].rstrip(":") in ACCEPTED


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default=None, help="comma-separated (default: cpu, and cuda where visible)")
    parser.add_argument("--tree", type=Path, default=REPO, help="the source tree whose built extension to import")
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
    wrong = False
    for device in devices:
        for name, result in run_device(device, args.tree.resolve(), args.label).items():
            if result.startswith(("CRASHED", "HUNG")):
                first_crash = first_crash or f"{device} {name}"
            else:
                wrong |= not raised_as_it_should(result)
    if first_crash:
        print(f"first crash: {first_crash}")
        return 2
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
