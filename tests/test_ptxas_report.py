"""tools/ptxas_report.py's reading of `ptxas -v` output (the gate itself compiles every kernel: `make
test-kernels`): resources per entry function, and ptxas's note where it serializes a kernel's wgmma, which
the gate counts as a problem of a hot kernel."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from ptxas_report import parse  # noqa: E402

WGMMA = ("_ZN8rcm_fsad7kernels40deform_conv2d_implicit_gemm_wgmma_kernelIfNS0_9Tf32SplitELi128EEEvNS0_18"
         "DeformConvGeometryEPKT_S6_NS0_12FieldStridesES6_S7_S6_S6_PS4_Pf")
TILES = "_ZN8rcm_fsad7kernels39deform_conv2d_wgmma_weight_tiles_kernelIfNS0_4Tf32EEEvNS0_18DeformConvGeometryEPKT_PS4_"
# As ptxas 13.0 prints it (the serialization note's wording as in its C7511 / C7515 notes).
OUTPUT = f"""\
ptxas info    : Compiling entry function '{TILES}' for 'sm_90a'
ptxas info    : Function properties for {TILES}
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 56 registers, used 0 barriers, 8 bytes cumulative stack size, 528 bytes cmem[0]
ptxas info    : (C7511) Potential Performance Loss: wgmma.mma_async instructions are serialized due to \
insufficient register resources for the wgmma pipeline in the function '{WGMMA}'
ptxas info    : Compiling entry function '{WGMMA}' for 'sm_90a'
ptxas info    : Function properties for {WGMMA}
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 200 registers, used 1 barriers, 528 bytes cmem[0]
"""


def test_resources_and_serialized_wgmma_per_kernel():
    found = {r.kernel: r for r in parse(OUTPUT)}
    wgmma = found["deform_conv2d_implicit_gemm_wgmma_kernel"]
    assert (wgmma.registers, wgmma.barriers, wgmma.stack_frame) == (200, 1, 0)
    assert wgmma.serialized == "due to insufficient register resources for the wgmma pipeline"
    assert wgmma.hot and wgmma.problems() == [
        "wgmma serialized: due to insufficient register resources for the wgmma pipeline"]
    tiles = found["deform_conv2d_wgmma_weight_tiles_kernel"]
    assert (tiles.registers, tiles.stack_frame, tiles.serialized) == (56, 8, "")
    assert not tiles.hot and tiles.problems() == ["8 bytes stack frame (local memory)"]
