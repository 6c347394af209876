"""Dispatcher-level checks of deform_conv2d: opcheck, torch.compile, errors, registered backends."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

import rcm_fsad_ops
from rcm_fsad_ops import _C
from tests.deform_cases import CASES, DeformCase


def op_args(case: DeformCase, device: str, dtype=torch.float64, requires_grad=True):
    t = case.tensors(dtype, device)
    if requires_grad:
        t = {k: None if v is None else v.requires_grad_(True) for k, v in t.items()}
    return (t["input"], t["offset"], t["weight"], t["mask"], t["bias"], list(case.stride),
            list(case.padding), list(case.dilation))


@pytest.mark.parametrize("name", ["basic", "no_mask_no_bias_groups", "k2x3"])
def test_opcheck(name, device):
    case = CASES[name]
    torch.library.opcheck(torch.ops.rcm_fsad.deform_conv2d.default, op_args(case, device))


def test_opcheck_channels_last(device):
    args = list(op_args(CASES["basic"], device, requires_grad=False))
    args[0] = args[0].contiguous(memory_format=torch.channels_last).requires_grad_(True)
    torch.library.opcheck(torch.ops.rcm_fsad.deform_conv2d.default, tuple(args))


def test_opcheck_backward_op(device):
    case = CASES["groups2_offset_groups3"]
    inp, off, w, m, b, *geometry = op_args(case, device, requires_grad=False)
    grad = torch.randn(case.batch, case.out_channels, *case.out_size, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.rcm_fsad.deform_conv2d_backward.default, (grad, inp, off, w, m, *geometry),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, device):
    case = CASES["basic"]
    t = case.tensors(torch.float32, device)

    def layer(x, offset, weight, bias, mask):
        return torch.relu(rcm_fsad_ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)) * 2

    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    args = [t["input"], t["offset"], t["weight"], t["bias"], t["mask"]]
    eager_args = [a.clone().requires_grad_(True) for a in args]
    compiled_args = [a.clone().requires_grad_(True) for a in args]
    expected = layer(*eager_args)
    got = compiled(*compiled_args)
    torch.testing.assert_close(got, expected)
    expected.sum().backward()
    got.sum().backward()
    for a, b in zip(compiled_args, eager_args):
        torch.testing.assert_close(a.grad, b.grad)


def good_args(device="cpu"):
    t = CASES["basic"].tensors(torch.float32, device)
    return dict(input=t["input"], offset=t["offset"], weight=t["weight"], bias=t["bias"], mask=t["mask"], padding=1)


BAD_INPUTS = {
    "input rank": (lambda a: a.update(input=a["input"][0]), r"expected input to be a 4-D tensor"),
    "weight rank": (lambda a: a.update(weight=a["weight"][0]), r"expected weight to be a 4-D tensor"),
    "offset rank": (lambda a: a.update(offset=a["offset"][0]), r"expected offset to be a 4-D tensor"),
    "mask rank": (lambda a: a.update(mask=a["mask"][0]), r"expected mask to be a 4-D tensor"),
    "integer input": (lambda a: a.update(input=a["input"].long()), r"input to be a floating-point"),
    "integer offset": (lambda a: a.update(offset=a["offset"].int()), r"offset to be a floating-point"),
    "mixed dtype weight": (lambda a: a.update(weight=a["weight"].double()), r"weight to have the same dtype"),
    "channels": (lambda a: a.update(weight=a["weight"][:, :3]), r"weight.shape\[1\].*must divide the input channels"),
    "groups vs out channels": (lambda a: a.update(input=torch.cat([a["input"]] * 2, 1), weight=a["weight"][:5, :2],
                                                  bias=a["bias"][:5]),
                               r"groups \(4.*must divide the output channels"),
    "offset channels": (lambda a: a.update(offset=a["offset"][:, :17]), r"offset.shape\[1\] must be a positive multiple of 2\*kh\*kw = 18"),
    "offset groups": (lambda a: a.update(offset=torch.cat([a["offset"]] * 3, 1)), r"offset groups \(3.*must divide the input channels"),
    "offset size": (lambda a: a.update(offset=a["offset"][..., :-1]), r"expected offset of shape \(2, 18, 7, 8\)"),
    "offset batch": (lambda a: a.update(offset=a["offset"][:1]), r"expected offset of shape"),
    "mask shape": (lambda a: a.update(mask=a["mask"][:, :8]), r"expected mask of shape \(2, 9, 7, 8\)"),
    "bias shape": (lambda a: a.update(bias=a["bias"][:2]), r"expected bias of shape \(6\)"),
    "stride zero": (lambda a: a.update(stride=0), r"stride values to be at least 1"),
    "negative padding": (lambda a: a.update(padding=-1), r"padding values to be at least 0"),
    "empty output": (lambda a: a.update(padding=0, input=a["input"][:, :, :2, :2]), r"the output would be empty"),
    "bad stride type": (lambda a: a.update(stride=(1, 2, 3)), r"expected stride to be an int or a pair"),
    "meta offset": (lambda a: a.update(offset=a["offset"].to("meta")), r"offset to be on the same device as input"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_errors_name_the_argument(name):
    args = good_args()
    change, message = BAD_INPUTS[name]
    change(args)
    with pytest.raises((RuntimeError, ValueError), match=message):
        rcm_fsad_ops.deform_conv2d(**args)


def test_cpu_rejects_other_float_types_with_a_clear_error():
    args = {k: v.to(torch.float8_e4m3fn) if isinstance(v, torch.Tensor) else v for k, v in good_args().items()}
    with pytest.raises(RuntimeError, match="CPU kernel supports float32, float64, float16 and bfloat16"):
        rcm_fsad_ops.deform_conv2d(**args)


def cuda_toolkit_present() -> bool:
    if os.environ.get("RCM_FSAD_CPU_ONLY") == "1":
        return False
    return bool(os.environ.get("CUDA_HOME") or shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc"))


@pytest.mark.skipif(not cuda_toolkit_present(), reason="no CUDA toolkit on this machine: CPU-only build")
def test_cuda_kernels_compiled_and_registered():
    """On any machine with a CUDA toolkit the CUDA sources must have compiled into the extension."""
    assert _C.built_with_cuda == 1
    kernels = rcm_fsad_ops.info()["kernels"]
    assert kernels["deform_conv2d"] == ["CPU", "CUDA", "AutocastCUDA"]
    assert kernels["deform_conv2d_backward"] == ["CPU", "CUDA"]
    assert rcm_fsad_ops.info()["cuda_arch_list"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_rejects_an_unknown_forward_algorithm(monkeypatch):
    monkeypatch.setenv("RCM_FSAD_DEFORM_CONV_ALGO", "fastest")
    t = CASES["basic"].tensors(torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="RCM_FSAD_DEFORM_CONV_ALGO must be 'implicit_gemm', "
                                           "'implicit_gemm_sync', 'implicit_gemm_mma', 'implicit_gemm_simt' "
                                           "or 'columns', got 'fastest'"):
        rcm_fsad_ops.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], padding=1, mask=t["mask"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_stays_in_low_precision(dtype):
    t = CASES["basic"].tensors(torch.float32, "cuda")
    with torch.autocast("cuda", dtype=dtype):
        out = rcm_fsad_ops.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], padding=1, mask=t["mask"])
    assert out.dtype == dtype


def test_info_reports_build():
    values = rcm_fsad_ops.info()
    assert values["torch"] == torch.__version__
    assert "CPU" in values["backends"] and values["threads"] == torch.get_num_threads()
    assert values["cpu_parallel"], "built without OpenMP: the CPU kernels' at::parallel_for runs serially"
    assert values["kernels"]["deform_conv2d"][0] == "CPU"
