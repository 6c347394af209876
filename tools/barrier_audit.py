#!/usr/bin/env python3
"""Mutation audit of the kernels' synchronisation: each barrier (__syncthreads,
__syncwarp), each wait for asynchronous copies (wait_async_copies<N>) and each fence of the wgmma kernel
(wgmma_fence, wgmma_fence_shared_writes) removed on its own must make its kernel's CPU-emulation tests
(tests/kernels, ThreadSanitizer build) fail.

    python tools/barrier_audit.py          run the audit: one line per point, exit 1 when a removal
                                           passes that its source does not mark as redundant
    python tools/barrier_audit.py --list   list the points only

A point whose comment block (the comment lines just above it) says "barrier audit: redundant" is
expected to pass, and the comment must say what orders those accesses instead; the audit fails if
such a point turns out to be needed after all.

The tree is never edited: csrc/kernels/ and tests/kernels/ are copied to a temporary directory, where
one ThreadSanitizer build of test_deform_kernels is rebuilt for each mutation. 10-15 minutes on
2 cores (`make audit-barriers`); not part of `make test`. Needs g++ >= 12, cmake and ninja; no torch,
no GPU. tests/kernels/README.md records the last audit.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = Path("csrc/kernels")

# Each audited header and the test cases that run its kernel (tests/kernels/test_deform_kernels.cpp):
# a 16-bit type and TF32 (or float), whose tiles differ.
CASES = {
    "deform_conv2d_implicit_gemm.cuh": ("igemm/float", "igemm/half"),
    "deform_conv2d_implicit_gemm_wmma.cuh": ("wmma/half", "wmma/tf32"),
    "deform_conv2d_implicit_gemm_wmma_async.cuh": ("wmma_async/half", "wmma_async/tf32"),
    "deform_conv2d_implicit_gemm_mma.cuh": ("mma/half", "mma/tf32"),
    "deform_conv2d_implicit_gemm_wgmma.cuh": ("wgmma/half", "wgmma/tf32"),
    "layout_transpose.cuh": ("transpose/float", "transpose/half"),
}

# A statement of its own line: a barrier, a wait for this thread's asynchronous copies, or a fence that
# orders registers (wgmma.fence) or shared memory (fence.proxy.async) before the tensor cores' reads.
STATEMENT = re.compile(
    r"^(\s*)((?:__syncthreads|__syncwarp|wgmma_fence|wgmma_fence_shared_writes)\(\)|wait_async_copies<\d+>\(\));(.*)$")
REDUNDANT_MARK = "barrier audit: redundant"


@dataclass(frozen=True)
class Point:
    header: str
    line: int  # 1-based
    statement: str
    redundant: bool  # marked as such in its comment block

    def name(self) -> str:
        return f"{self.header}:{self.line} {self.statement}"


def points(root: Path = ROOT) -> list[Point]:
    """Every synchronisation point of the audited headers, in file order. Raises ValueError for a
    header with synchronisation points that CASES does not list (its kernel would go unaudited)."""
    for path in sorted((root / KERNELS).glob("*.cuh")):
        if path.name not in CASES and any(STATEMENT.match(t) for t in path.read_text().splitlines()):
            raise ValueError(f"{path.name} synchronises but has no test cases in barrier_audit.CASES")
    found = []
    for header in CASES:
        lines = (root / KERNELS / header).read_text().splitlines()
        for i, text in enumerate(lines):
            m = STATEMENT.match(text)
            if m is None:
                continue
            j = i - 1
            block = []
            while j >= 0 and lines[j].strip().startswith("//"):
                block.append(lines[j])
                j -= 1
            marked = REDUNDANT_MARK in " ".join(block) or REDUNDANT_MARK in m.group(3)
            found.append(Point(header, i + 1, m.group(2), marked))
    return found


def removed(text: str, line: int) -> str:
    """text with the statement on `line` (1-based) commented out."""
    lines = text.splitlines(keepends=True)
    m = STATEMENT.match(lines[line - 1].rstrip("\n"))
    if m is None:
        raise ValueError(f"line {line} is not a synchronisation statement: {lines[line - 1]!r}")
    lines[line - 1] = f"{m.group(1)}// audit: removed {m.group(2)};\n"
    return "".join(lines)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True)


def first_report(output: str) -> str:
    """The line that says how a run failed: a TSan warning, an emulator error or a FAIL line."""
    for pattern in ("WARNING: ThreadSanitizer", "emu: error", "FAIL"):
        for text in output.splitlines():
            if pattern in text:
                return text.strip()[:110]
    return "non-zero exit"


class Workspace:
    """A copy of csrc/kernels and tests/kernels with a ThreadSanitizer build of test_deform_kernels."""

    def __init__(self, directory: Path):
        self.root = directory
        for part in (KERNELS, Path("tests/kernels")):
            shutil.copytree(ROOT / part, directory / part)
        self.build = directory / "build"
        configure = run(["cmake", "-S", "tests/kernels", "-B", str(self.build), "-G", "Ninja",
                         "-DCMAKE_CXX_COMPILER=g++", "-DKERNEL_TESTS_SANITIZER=thread"], directory)
        if configure.returncode != 0:
            sys.exit(f"cmake configure failed:\n{configure.stdout}{configure.stderr}")

    def compile(self) -> None:
        built = run(["cmake", "--build", str(self.build), "-j", "2", "--target", "test_deform_kernels"], self.root)
        if built.returncode != 0:
            sys.exit(f"build failed:\n{built.stdout[-4000:]}{built.stderr[-4000:]}")

    def failure(self, case: str) -> str | None:
        """How `case` fails, or None when it passes (TSan exits 66 after a report, even past a PASS)."""
        result = run([str(self.build / "test_deform_kernels"), case], self.root)
        return None if result.returncode == 0 else first_report(result.stdout + result.stderr)


def audit() -> int:
    found = points()
    with tempfile.TemporaryDirectory(prefix="barrier_audit_") as tmp:
        ws = Workspace(Path(tmp))
        ws.compile()
        for cases in CASES.values():
            for case in cases:
                if (why := ws.failure(case)) is not None:
                    sys.exit(f"{case} fails before any removal: {why}")
        unexpected = 0
        for point in found:
            path = ws.root / KERNELS / point.header
            original = path.read_text()
            path.write_text(removed(original, point.line))
            try:
                ws.compile()
                caught = None
                for case in CASES[point.header]:
                    if (caught := ws.failure(case)) is not None:
                        caught = f"{case}: {caught}"
                        break
            finally:
                path.write_text(original)
            if caught is not None:
                verdict = "redundant by its comment, yet NEEDED" if point.redundant else "caught"
                unexpected += point.redundant
            else:
                verdict = "passes, as its comment says" if point.redundant else "NOT CAUGHT"
                unexpected += not point.redundant
            print(f"{verdict:<37} {point.name()}" + (f"\n{'':<37} {caught}" if caught else ""), flush=True)
    print(f"{len(found)} points, {unexpected} unexpected")
    return 1 if unexpected else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the synchronisation points and exit")
    args = parser.parse_args()
    if args.list:
        for point in points():
            print(point.name() + ("  (marked redundant)" if point.redundant else ""))
        return 0
    return audit()


if __name__ == "__main__":
    sys.exit(main())
