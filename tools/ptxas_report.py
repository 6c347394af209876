#!/usr/bin/env python3
"""Registers, spills, shared and local memory of every CUDA kernel, for sm_90a (Hopper with its wgmma),
from `ptxas -v`.

Compiles the torch-free kernel headers (csrc/kernels/) in a generated .cu that instantiates every
__global__ kernel for each dtype and index type the CUDA backend launches, and parses ptxas' report.

    python tools/ptxas_report.py            print the table
    python tools/ptxas_report.py --write    refresh benchmarks/results/ptxas_sm90.md
    python tools/ptxas_report.py --check    exit 1 when a HOT kernel spills, uses local memory or has
                                            its wgmma serialized by ptxas

--write and --check combine. The CUDA toolkit is found like the build finds it
(tools/build_env.py: CUDA_HOME, CUDA_PATH, the nvcc on PATH, /usr/local/cuda); without one, --check
says "ptxas check skipped" and exits 0, the other modes exit 2. Torch-free: runs with any python3.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Kernels whose every instantiation must run out of registers: no spill stores/loads and no
# stack frame (local memory). Listed by base name.
HOT_KERNELS = (
    "deform_im2col_kernel",
    "deform_col2im_kernel",
    "deform_col2im_input_gather_kernel",
    "deform_conv2d_implicit_gemm_kernel",
    "deform_conv2d_implicit_gemm_wmma_kernel",
    "deform_conv2d_implicit_gemm_wmma_async_kernel",
    "deform_conv2d_implicit_gemm_mma_kernel",
    "deform_conv2d_implicit_gemm_wgmma_kernel",
    "batched_transpose_kernel",
)

# (scalar_t, acc_t) as the CUDA backend dispatches them (AT_DISPATCH_FLOATING_TYPES_AND2(Half,
# BFloat16), acc_t = at::opmath_type). Half and BFloat16 are stand-ins for c10::Half / c10::BFloat16
# defined in the generated source: 16-bit storage converted through the CUDA intrinsics, which is
# what c10 does in device code, without the libtorch headers.
DTYPES = (
    ("float", "float"),
    ("double", "double"),
    ("Half", "float"),
    ("BFloat16", "float"),
)
INDEX_TYPES = ("int32_t", "int64_t")
# (scalar_t, mma_t, block width) of the tensor-core kernel, as the backend launches it
# (kernels::wmma_tile_cols: TF32 only 64 wide).
TENSOR_CORE_TYPES = (("Half", "__half", "64"), ("Half", "__half", "128"), ("BFloat16", "__nv_bfloat16", "64"),
                     ("BFloat16", "__nv_bfloat16", "128"), ("float", "Tf32", "64"))

# (scalar_t, mma_t, warp width, warps along the columns) of the mma.sync kernel
# (kernels::mma_warp_cols, kernels::mma_warps_along_cols), TF32 and split TF32 included.
MMA_INPUT_TYPES = (("Half", "__half"), ("BFloat16", "__nv_bfloat16"), ("float", "Tf32"), ("float", "Tf32Split"))
MMA_TYPES = tuple((scalar, mma, *layout) for scalar, mma in MMA_INPUT_TYPES
                  for layout in ((("64", "1"), ("64", "2")) if mma == "Tf32Split"
                                 else (("64", "1"), ("128", "1"), ("128", "2"))))

# (scalar_t, mma_t, block width) of the wgmma kernel (kernels::wgmma_tile_cols: split TF32 at most 128
# wide), and (scalar_t, mma_t) of its weight tiles.
WGMMA_INPUT_TYPES = MMA_INPUT_TYPES
WGMMA_TYPES = tuple((scalar, mma, cols) for scalar, mma in WGMMA_INPUT_TYPES
                    for cols in (("64", "128") if mma == "Tf32Split" else ("64", "128", "256")))

# (in_t, out_t) of the layout transpose (csrc/cuda/layout_cuda.cu): each dtype to itself, and float to the
# 16-bit types (input gradients summed in float).
TRANSPOSE_TYPES = (("float", "float"), ("double", "double"), ("Half", "Half"), ("BFloat16", "BFloat16"),
                   ("float", "Half"), ("float", "BFloat16"))

# (scalar_t, acc_t, index_t) of the grid-stride kernels.
WITH_INDEX_TYPES = tuple(d + (i,) for d in DTYPES for i in INDEX_TYPES)
# The same with the sampling kernels' lanes a sample (kernels::lanes_per_sample).
WITH_SAMPLE_LANES = tuple(t + (lanes,) for t in WITH_INDEX_TYPES for lanes in ("8", "16", "32"))

# Every __global__ kernel of csrc/kernels/: name -> (header, the template arguments of each
# instantiation the backend launches). --check fails when the headers declare a kernel that is not
# listed here.
KERNELS = {
    "deform_im2col_kernel": ("deform_conv2d_kernels.cuh", WITH_SAMPLE_LANES),
    "deform_col2im_kernel": ("deform_conv2d_kernels.cuh", WITH_SAMPLE_LANES),
    "deform_sample_table_kernel": ("deform_conv2d_kernels.cuh", WITH_INDEX_TYPES),
    "deform_sample_keys_kernel": ("deform_conv2d_kernels.cuh",
                                  tuple((acc, i) for acc in ("float", "double") for i in INDEX_TYPES)),
    "deform_col2im_input_gather_kernel": ("deform_conv2d_kernels.cuh", WITH_INDEX_TYPES),
    "deform_conv2d_implicit_gemm_kernel": ("deform_conv2d_implicit_gemm.cuh",
                                           tuple(d + (vectors,) for d in DTYPES for vectors in ("false", "true"))),
    "deform_conv2d_implicit_gemm_wmma_kernel": ("deform_conv2d_implicit_gemm_wmma.cuh", TENSOR_CORE_TYPES),
    "deform_conv2d_implicit_gemm_wmma_async_kernel": ("deform_conv2d_implicit_gemm_wmma_async.cuh",
                                                      TENSOR_CORE_TYPES),
    "deform_conv2d_implicit_gemm_mma_kernel": ("deform_conv2d_implicit_gemm_mma.cuh", MMA_TYPES),
    "deform_conv2d_mma_weight_fragments_kernel": ("deform_conv2d_implicit_gemm_mma.cuh", MMA_INPUT_TYPES),
    "deform_conv2d_implicit_gemm_wgmma_kernel": ("deform_conv2d_implicit_gemm_wgmma.cuh", WGMMA_TYPES),
    "deform_conv2d_wgmma_weight_tiles_kernel": ("deform_conv2d_implicit_gemm_wgmma.cuh", WGMMA_INPUT_TYPES),
    "deform_conv2d_split_sum_kernel": ("deform_conv2d_tile_corners.cuh", DTYPES),
    "batched_transpose_kernel": ("layout_transpose.cuh", TRANSPOSE_TYPES),
}
# Template arguments: this tool's spelling -> the C++ spelling in the generated source.
_SOURCE_SPELLING = {"Tf32": "rcm_fsad::kernels::Tf32", "Tf32Split": "rcm_fsad::kernels::Tf32Split"}

ARCH = "sm_90a"  # Hopper with its arch-specific features (wgmma); the same code as sm_90 for the rest
# The device flags of the extension build (torch's cpp_extension + setup.py), plus what ptxas needs; in
# C++17, the standard torch 2.11 (the GPU machine's) builds extensions in, so that the kernel headers are
# checked in it here (torch 2.14 builds in C++20).
NVCC_FLAGS = ["-std=c++17", "-O3", "-lineinfo", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
              "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
              f"-arch={ARCH}", "--cubin", "-Xptxas", "-v"]

ROOT = Path(__file__).resolve().parent.parent
KERNEL_DIR = ROOT / "csrc" / "kernels"
TABLE = ROOT / "benchmarks" / "results" / "ptxas_sm90.md"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_env import find_cuda_home  # noqa: E402  (torch-free)


@dataclass
class KernelResources:
    kernel: str
    args: tuple[str, ...]  # template arguments
    registers: int = 0
    stack_frame: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    shared: int = 0
    local: int = 0
    barriers: int = 0
    serialized: str = ""  # ptxas's reason for issuing the kernel's wgmma one at a time, if it does

    @property
    def label(self) -> str:
        return f"{self.kernel}<{', '.join(self.args)}>"

    @property
    def hot(self) -> bool:
        return self.kernel in HOT_KERNELS

    def problems(self) -> list[str]:
        found = []
        if self.spill_stores or self.spill_loads:
            found.append(f"{self.spill_stores} bytes spill stores, {self.spill_loads} bytes spill loads")
        if self.stack_frame or self.local:
            parts = [f"{self.stack_frame} bytes stack frame"] if self.stack_frame else []
            parts += [f"{self.local} bytes lmem"] if self.local else []
            found.append(", ".join(parts) + " (local memory)")
        if self.serialized:
            found.append(f"wgmma serialized: {self.serialized}")
        return found


def instances() -> list[tuple[str, tuple[str, ...]]]:
    """(kernel, template arguments) of every instantiation to compile."""
    return [(k, args) for k, (_, instantiations) in KERNELS.items() for args in instantiations]


def declared_kernels() -> dict[str, str]:
    """Every __global__ function declared under csrc/kernels/: name -> header."""
    pattern = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(")
    found = {}
    for header in sorted(KERNEL_DIR.glob("*.cuh")):
        for name in pattern.findall(header.read_text()):
            found[name] = header.name
    return found


def generated_source() -> str:
    headers = sorted({header for header, _ in KERNELS.values()})
    lines = [
        "// Generated by tools/ptxas_report.py: every kernel the CUDA backend launches.",
        "#include <cstdint>",
        "#include <cuda_bf16.h>",
        "#include <cuda_fp16.h>",
        *[f'#include "kernels/{header}"' for header in headers],
        "",
        "// Stand-ins for c10::Half and c10::BFloat16 (storage + float conversions, as c10 on the device).",
        "struct Half {",
        "  unsigned short x;",
        "  Half() = default;",
        "  __host__ __device__ Half(float f) : x(__half_as_ushort(__float2half_rn(f))) {}",
        "  __host__ __device__ operator float() const { return __half2float(__ushort_as_half(x)); }",
        "};",
        "struct BFloat16 {",
        "  unsigned short x;",
        "  BFloat16() = default;",
        "  __host__ __device__ BFloat16(float f) : x(__bfloat16_as_ushort(__float2bfloat16_rn(f))) {}",
        "  __host__ __device__ operator float() const { return __bfloat162float(__ushort_as_bfloat16(x)); }",
        "};",
        "",
        "void* const rcm_ptxas_report_kernels[] = {",
    ]
    for kernel, args in instances():
        spelled = ", ".join(_SOURCE_SPELLING.get(a, a) for a in args)
        lines.append(f"    reinterpret_cast<void*>(&rcm_fsad::kernels::{kernel}<{spelled}>),")
    lines.append("};")
    return "\n".join(lines) + "\n"


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"release ([\d.]+), (V[\d.]+)", out)
    return f"{match.group(1)} ({match.group(2)})" if match else "unknown"


def demangle(names: list[str]) -> dict[str, str]:
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


# Spelling of the template arguments in demangled names -> the spelling of this tool.
_CANONICAL = {"int": "int32_t", "long": "int64_t", "long long": "int64_t",
              **{source: ours for ours, source in _SOURCE_SPELLING.items()}}


def parse(ptxas_output: str) -> list[KernelResources]:
    """The resources of every entry function in `ptxas -v` output, and ptxas's note where it serializes a
    function's wgmma ("Potential Performance Loss: wgmma.mma_async instructions are serialized due to
    <reason> in the function '<name>'": each then waits for the one before, and the kernel loses the
    overlap it is built for)."""
    entries: dict[str, dict[str, int]] = {}
    serialized: dict[str, str] = {}
    current = None
    for line in ptxas_output.splitlines():
        m = re.search(r"wgmma\.mma_async instructions are serialized (.*?)\s*in the function '([^']+)'", line)
        if m:
            serialized[m.group(2)] = m.group(1)
            continue
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = m.group(1)
            entries.setdefault(current, {})
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1) if m.group(1) in entries else None
            continue
        if current is None:
            continue
        stats = entries[current]
        for key, pattern in (("stack_frame", r"(\d+) bytes stack frame"),
                             ("spill_stores", r"(\d+) bytes spill stores"),
                             ("spill_loads", r"(\d+) bytes spill loads"),
                             ("registers", r"Used (\d+) registers"),
                             ("barriers", r"used (\d+) barriers"),
                             ("shared", r"(\d+) bytes smem"),
                             ("local", r"(\d+) bytes lmem")):
            m = re.search(pattern, line)
            if m:
                stats[key] = int(m.group(1))
    names = demangle(list(entries))
    result = []
    for mangled, stats in entries.items():
        m = re.search(r"(\w+)<([^<>]*)>\(", names[mangled])
        if m:
            kernel = m.group(1)
            args = tuple(_CANONICAL.get(a.strip(), a.strip()) for a in m.group(2).split(","))
        else:
            kernel, args = mangled, ()
        result.append(KernelResources(kernel, args, **stats, serialized=serialized.get(mangled, "")))
    order = {instance: n for n, instance in enumerate(instances())}
    result.sort(key=lambda r: order.get((r.kernel, r.args), len(order)))
    return result


def compile_report(cuda_home: str) -> tuple[list[KernelResources], str]:
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    with tempfile.TemporaryDirectory(prefix="rcm_ptxas_") as tmp:
        source = Path(tmp) / "ptxas_report_kernels.cu"
        source.write_text(generated_source())
        cmd = [nvcc, *NVCC_FLAGS, "-I", str(ROOT / "csrc"), str(source), "-o", str(Path(tmp) / "kernels.cubin")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit(f"ptxas report: nvcc failed ({proc.returncode}): {' '.join(cmd)}")
    results = parse(proc.stdout + proc.stderr)
    missing = {KernelResources(k, args).label for k, args in instances()} - {r.label for r in results}
    if missing:
        raise SystemExit(f"ptxas report: no ptxas entry for {', '.join(sorted(missing))}")
    return results, nvcc_version(nvcc)


def markdown(results: list[KernelResources], version: str) -> str:
    lines = [
        f"# ptxas resources of the CUDA kernels ({ARCH})",
        "",
        "Generated by `python tools/ptxas_report.py --write`; do not edit by hand.",
        f"nvcc {version}, `{' '.join(NVCC_FLAGS)}`.",
        "Every `__global__` kernel of `csrc/kernels/`, instantiated for the dtypes and index types the CUDA "
        "backend launches. Hot kernels "
        f"({', '.join(f'`{k}`' for k in HOT_KERNELS)}) must not spill, use local memory or have their "
        "wgmma serialized: `python tools/ptxas_report.py --check` (run by `make test-kernels`) fails "
        "otherwise.",
        "`Half` / `BFloat16` arguments are stand-ins for the backend's `c10::Half` / `c10::BFloat16` "
        "(16-bit storage, conversions through the CUDA intrinsics). Template arguments: (scalar_t, acc_t"
        "[, index_t][, lanes a sample]) for the grid-stride kernels; (scalar_t, acc_t, whole 16-byte "
        "vectors) for the CUDA-core implicit GEMM; (scalar_t, mma_t, block width) for the WMMA and wgmma "
        "kernels; (scalar_t, mma_t, warp width, warps along the columns) for the mma.sync kernel; "
        "(in_t, out_t) for the transpose.",
        "The kernels' shared memory is dynamic (`RCM_DYNAMIC_SHARED`, sized by the launcher), which ptxas "
        "does not count: the static column stays 0.",
        "",
        "| kernel | template arguments | registers | spill stores (B) | spill loads (B) "
        "| stack frame (B) | local (B) | static shared (B) | barriers | hot |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        lines.append(
            f"| `{r.kernel}` | {', '.join(r.args)} | {r.registers} | {r.spill_stores} "
            f"| {r.spill_loads} | {r.stack_frame} | {r.local} | {r.shared} | {r.barriers} | {'yes' if r.hot else ''} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {TABLE.relative_to(ROOT)}")
    parser.add_argument("--check", action="store_true",
                        help="fail when a hot kernel spills, uses local memory or has its wgmma serialized")
    args = parser.parse_args(argv)

    cuda_home = find_cuda_home()
    if cuda_home is None:
        if args.check and not args.write:
            print("ptxas check skipped: no CUDA toolkit found (CUDA_HOME, nvcc on PATH, /usr/local/cuda)")
            return 0
        print("ptxas report: no CUDA toolkit found (CUDA_HOME, nvcc on PATH, /usr/local/cuda)", file=sys.stderr)
        return 2

    unlisted = {name: header for name, header in declared_kernels().items() if name not in KERNELS}
    if unlisted:
        listing = ", ".join(f"{name} ({header})" for name, header in unlisted.items())
        print(f"ptxas report: kernels missing from KERNELS in tools/ptxas_report.py: {listing}")
        if args.check:
            print("ptxas check FAILED: add them (and to HOT_KERNELS if they are on a hot path)")
            return 1

    results, version = compile_report(cuda_home)
    table = markdown(results, version)
    if args.write:
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        TABLE.write_text(table)
        print(f"wrote {TABLE.relative_to(ROOT)} ({len(results)} kernels, nvcc {version})")
    if not args.check:
        if not args.write:
            print(table, end="")
        return 0

    offenders = [(r, p) for r in results if r.hot for p in r.problems()]
    if offenders:
        print(f"ptxas check FAILED ({ARCH}): hot kernels spill, use local memory or serialize their wgmma:")
        for r, problem in offenders:
            print(f"  {r.label}: {problem} ({r.registers} registers)")
        print("Keep them in registers (fewer live values, smaller types, no dynamically indexed local arrays), "
              "or take the kernel off HOT_KERNELS in tools/ptxas_report.py on purpose.")
        return 1
    hot = [r for r in results if r.hot]
    print(f"ptxas check passed ({ARCH}, nvcc {version}): {len(hot)} hot kernel instantiations, no spills, "
          f"no local memory, no serialized wgmma (registers {min(r.registers for r in hot)}.."
          f"{max(r.registers for r in hot)})")
    if TABLE.exists() and TABLE.read_text() != table:
        print(f"note: {TABLE.relative_to(ROOT)} is out of date: python tools/ptxas_report.py --write")
    return 0


if __name__ == "__main__":
    sys.exit(main())
