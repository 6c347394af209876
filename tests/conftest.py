import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Every parity test runs on each available device; CUDA test ids contain 'cuda'."""
    return request.param
