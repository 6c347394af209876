"""tools/older_torch_check.py fails on the compilers' warnings and errors in the sources, and only on those:
torch 2.13's own headers draw C++20-extension warnings as C++17."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from older_torch_check import SRC, warnings_in_sources  # noqa: E402


def test_warnings_in_the_sources_are_found_in_either_compilers_format():
    ours = [
        f"{SRC}/csrc/ops.cpp:20:25: error: 'span' is not a member of 'std'",
        f"{SRC}/csrc/cpu/sampling.h:7:3: warning: unused variable 'x' [-Wunused-variable]",
        f"{SRC}/csrc/cuda/layout_cuda.cu(76): warning #3288-D: explicit lambda template parameters are a C++20 "
        "feature",
        f"{SRC}/csrc/cuda/layout_cuda.cu(76): error: identifier \"concept\" is undefined",
        f"{SRC}/csrc/ops.cpp:3:10: fatal error: missing.h: No such file or directory",
    ]
    theirs = [
        f"{SRC.parent}/venv/lib/python3.11/site-packages/torch/include/c10/core/AutogradState.h:89:33: warning: "
        "default member initializers for bit-fields only available with '-std=c++20' [-Wc++20-extensions]",
        f"{SRC.parent}/venv/lib/python3.11/site-packages/torch/include/c10/core/AutogradState.h(89): warning "
        "#3306-D: a default bit-field initializer is a C++20 feature",
        f"                 from {SRC}/csrc/ops.cpp:3:",
        f"{SRC}/csrc/ops.cpp: In function 'int planted()':",
        "Remark: The warnings can be suppressed with \"-diag-suppress <warning-number>\"",
    ]
    assert warnings_in_sources("\n".join(theirs + ours + theirs)) == ours
    assert warnings_in_sources("\n".join(theirs)) == []
