"""tools/barrier_audit.py's reading of the kernels (the audit itself, 10-15 minutes of rebuilds, runs
by `make audit-barriers`): the synchronisation points it finds, the redundancy mark, the mutation it
makes, and the refusal to skip a header whose kernel synchronises."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from barrier_audit import CASES, KERNELS, ROOT, points, removed  # noqa: E402


def test_every_audited_header_has_points_and_every_point_is_a_statement_of_its_own():
    found = points()
    assert {p.header for p in found} == set(CASES)
    for p in found:
        text = (ROOT / KERNELS / p.header).read_text().splitlines()[p.line - 1]
        assert text.strip().startswith(p.statement + ";"), (p, text)


def test_only_the_marked_point_is_expected_to_pass():
    marked = [p for p in points() if p.redundant]
    assert [(p.header, p.statement) for p in marked] == [("deform_conv2d_implicit_gemm_mma.cuh", "__syncwarp()")]


def test_removal_comments_out_exactly_one_statement():
    text = "  a();\n  __syncthreads();  // why\n  wait_async_copies<1>();\n"
    assert removed(text, 2) == "  a();\n  // audit: removed __syncthreads();\n  wait_async_copies<1>();\n"
    assert removed(text, 3).splitlines()[2] == "  // audit: removed wait_async_copies<1>();"
    with pytest.raises(ValueError, match="line 1 is not a synchronisation statement"):
        removed(text, 1)


def test_a_synchronising_header_without_cases_is_refused(tmp_path):
    shutil.copytree(ROOT / KERNELS, tmp_path / KERNELS)
    (tmp_path / KERNELS / "new_kernel.cuh").write_text("__global__ void k() {\n  __syncthreads();\n}\n")
    with pytest.raises(ValueError, match="new_kernel.cuh synchronises but has no test cases"):
        points(tmp_path)


@pytest.mark.parametrize("gap, marked", [([], True), ([""], False)])
def test_the_redundancy_mark_counts_only_in_the_comment_block_right_above(tmp_path, gap, marked):
    shutil.copytree(ROOT / KERNELS, tmp_path / KERNELS)
    header = "deform_conv2d_implicit_gemm_wmma.cuh"
    first = next(p for p in points(tmp_path) if p.header == header)
    path = tmp_path / KERNELS / header
    lines = path.read_text().splitlines()
    lines[first.line - 1:first.line - 1] = ["    // ordered by the barrier above (barrier audit: redundant)", *gap]
    path.write_text("\n".join(lines) + "\n")
    moved = next(p for p in points(tmp_path) if p.header == header)
    assert moved.statement == first.statement and moved.redundant is marked
