import pytest
import torch

from benchmarks import shapes
from benchmarks.shapes import Case
from tests.benchmark_cases import TINY

# (test id, device, CUDA forward algorithm): every CUDA parity test runs each forward path (on sm_80+
# the default one takes tensor cores for float16/bfloat16, for float32 under TF32, and for float32
# without TF32 on operands split in two TF32 parts; cuda-wgmma takes the wgmma kernel where
# rcm_fsad_ops.info()["wgmma"] says it runs, cuda-simt the CUDA-core kernel).
BACKENDS = [("cpu", "cpu", None)]
if torch.cuda.is_available():
    BACKENDS += [("cuda", "cuda", "implicit_gemm"), ("cuda-wgmma", "cuda", "implicit_gemm_wgmma"),
                 ("cuda-wmma", "cuda", "implicit_gemm_wmma"),
                 ("cuda-simt", "cuda", "implicit_gemm_simt"), ("cuda-columns", "cuda", "columns"),
                 ("cuda-autotune", "cuda", "autotune")]


@pytest.fixture(params=BACKENDS, ids=[b[0] for b in BACKENDS])
def device(request, monkeypatch) -> str:
    """Every parity test runs on each available device; CUDA test ids contain 'cuda'."""
    _, device, algorithm = request.param
    if algorithm is not None:
        monkeypatch.setenv("RCM_FSAD_DEFORM_CONV_ALGO", algorithm)
    return device


@pytest.fixture
def tiny_case(monkeypatch) -> Case:
    """TINY as the only benchmark case, so that the command line (--cases) can name it."""
    monkeypatch.setattr(shapes, "CASES", [TINY])
    monkeypatch.setattr(shapes, "CASES_BY_NAME", {TINY.name: TINY})
    return TINY


def pytest_collection_modifyitems(config, items):
    """benchmarks/gpu_check.sh runs the GPU tests as `pytest tests -k cuda`: a test that needs a GPU and whose
    id does not say cuda would never run there, so collection stops on one."""
    unreachable = [item.nodeid for item in items
                   if any(marker.kwargs.get("reason") == "needs a GPU" for marker in item.iter_markers("skipif"))
                   and "cuda" not in item.nodeid]
    if unreachable:
        raise pytest.UsageError("tests that need a GPU must have 'cuda' in their names (gpu_check.sh selects them "
                                f"with -k cuda): {unreachable}")
