import pytest
import torch

# (test id, device, CUDA forward algorithm): every CUDA parity test runs both forward paths.
BACKENDS = [("cpu", "cpu", None)]
if torch.cuda.is_available():
    BACKENDS += [("cuda", "cuda", "implicit_gemm"), ("cuda-columns", "cuda", "columns")]


@pytest.fixture(params=BACKENDS, ids=[b[0] for b in BACKENDS])
def device(request, monkeypatch) -> str:
    """Every parity test runs on each available device; CUDA test ids contain 'cuda'."""
    _, device, algorithm = request.param
    if algorithm is not None:
        monkeypatch.setenv("RCM_FSAD_DEFORM_CONV_ALGO", algorithm)
    return device
