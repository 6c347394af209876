"""Dispatcher-level checks of deform_conv2d: opcheck, torch.compile, errors, registered backends."""
from __future__ import annotations

import os
import shutil

import pytest
import torch
import torchvision
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.modules.utils import _pair

import rcm_fsad_ops
from rcm_fsad_ops import _C
from rcm_fsad_ops.nn import ModulatedDeformConv2dWithOffsetPredictor
from tests.deform_cases import CASES, DeformCase
from tests.test_deform_conv2d import assert_output_error_is_that_of_its_rounding, runs_as, threads


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


def test_opcheck_bfloat16(device):
    """bfloat16 too: on the CPU its forward may take the bfloat16 GEMMs (info()'s cpu_bfloat16_gemms), its
    backward float32; on CUDA the tensor-core kernels."""
    torch.library.opcheck(torch.ops.rcm_fsad.deform_conv2d.default, op_args(CASES["basic"], device, torch.bfloat16))


def test_opcheck_channels_last(device):
    args = list(op_args(CASES["basic"], device, requires_grad=False))
    args[0] = args[0].contiguous(memory_format=torch.channels_last).requires_grad_(True)
    torch.library.opcheck(torch.ops.rcm_fsad.deform_conv2d.default, tuple(args))


@pytest.mark.parametrize("weight_layout", [torch.contiguous_format, torch.channels_last])
def test_opcheck_backward_op(weight_layout, device):
    """The fake kernel's gradients take the real ones' layouts too (the weight's for the weight gradient)."""
    case = CASES["groups2_offset_groups3"]
    inp, off, w, m, b, *geometry = op_args(case, device, requires_grad=False)
    w = w.contiguous(memory_format=weight_layout)
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


def test_compiled_autograd_traces_the_ops_autograd_node(device):
    """With compiled autograd, a compiled backward of an eager forward traces the op's C++ autograd node
    (csrc/autograd.cpp, marked traceable) into the graph it hands the backend, and gives eager's
    gradients. (A forward compiled too would hand compiled autograd AOTAutograd's node instead.)"""
    case = CASES["basic"]
    t = case.tensors(torch.float64, device)
    args = [t["input"], t["offset"], t["weight"], t["bias"], t["mask"]]
    gradients = []
    for compiled in (False, True):
        leaves = [a.clone().requires_grad_(True) for a in args]
        x, offset, weight, bias, mask = leaves
        loss = rcm_fsad_ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask).square().sum()
        if compiled:
            graphs = []

            def backend(gm, example_inputs):
                graphs.append(gm.code)
                return gm.forward

            with torch._dynamo.config.patch(compiled_autograd=True):
                torch.compile(lambda loss: loss.backward(), backend=backend)(loss)
            assert any("DeformConv2dFunction" in code for code in graphs)
        else:
            loss.backward()
        gradients.append([leaf.grad for leaf in leaves])
    for eager, compiled in zip(*gradients):
        torch.testing.assert_close(compiled, eager)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("stride, padding", [(2, 1), ((2, 1), (1, 0)), ([1, 2], [0, 1])],
                         ids=["ints", "tuples", "lists"])
def test_torchscript_function_matches_eager(stride, padding, device):
    """torch.jit.script takes the function as it takes torchvision's; values and gradients as in eager."""
    case = CASES["groups2_offset_groups3"].with_(stride=_pair(stride), padding=_pair(padding))
    t = case.tensors(torch.float64, device)
    scripted = torch.jit.script(rcm_fsad_ops.deform_conv2d)
    results = []
    for fn in (rcm_fsad_ops.deform_conv2d, scripted):
        leaves = [t[k].clone().requires_grad_(True) for k in ("input", "offset", "weight", "bias", "mask")]
        out = fn(leaves[0], leaves[1], leaves[2], leaves[3], stride, padding, 1, leaves[4])
        out.square().sum().backward()
        results.append([out.detach()] + [leaf.grad for leaf in leaves])
    # Bit for bit on the CPU. The CUDA backward adds the input gradient with atomics, whose order (and
    # so the last bit of a float64 sum) varies from run to run: there float64's default tolerance.
    exact = dict(rtol=0, atol=0) if t["input"].device.type == "cpu" else {}
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **exact)


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
    "mask size": (lambda a: a.update(mask=a["mask"][..., :-1]), r"expected mask of shape \(2, 9, 7, 8\)"),
    "mask batch": (lambda a: a.update(mask=a["mask"][:1]), r"expected mask of shape \(2, 9, 7, 8\)"),
    "mask dtype": (lambda a: a.update(mask=a["mask"].double()), r"mask to have the same dtype"),
    "integer weight": (lambda a: a.update(weight=a["weight"].int()), r"weight to be a floating-point"),
    "empty kernel": (lambda a: a.update(weight=a["weight"][..., :0]), r"weight to have a non-empty kernel"),
    "bias rank": (lambda a: a.update(bias=a["bias"].view(2, 3)), r"expected bias of shape \(6\)"),
    "bias dtype": (lambda a: a.update(bias=a["bias"].double()), r"bias to have the same dtype"),
    "stride zero": (lambda a: a.update(stride=0), r"stride values to be at least 1"),
    "dilation zero": (lambda a: a.update(dilation=(1, 0)), r"dilation values to be at least 1"),
    "negative padding": (lambda a: a.update(padding=-1), r"padding values to be at least 0"),
    "empty output": (lambda a: a.update(padding=0, input=a["input"][:, :, :2, :2]), r"the output would be empty"),
    "bad stride type": (lambda a: a.update(stride=(1, 2, 3)), r"expected stride to be an int or a pair"),
    "meta offset": (lambda a: a.update(offset=a["offset"].to("meta")), r"offset to be on the same device as input"),
    "missing offset": (lambda a: a.update(offset=None), r"expected offset to be a Tensor, got NoneType"),
    "weight as a list": (lambda a: a.update(weight=a["weight"].tolist()), r"expected weight to be a Tensor, got list"),
    "mask as a number": (lambda a: a.update(mask=0.5), r"expected mask to be a Tensor or None, got float"),
    "sparse weight": (lambda a: a.update(weight=a["weight"].to_sparse()),
                      r"expected weight to be a dense tensor, got a torch.sparse_coo one"),
    "nested mask": (lambda a: a.update(mask=torch.nested.as_nested_tensor(list(a["mask"]), layout=torch.jagged)),
                    r"expected mask to be a dense tensor, got a nested one"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_errors_name_the_argument(name):
    args = good_args()
    change, message = BAD_INPUTS[name]
    change(args)
    with pytest.raises((RuntimeError, ValueError, TypeError), match=message):
        rcm_fsad_ops.deform_conv2d(**args)


def on_meta(args: dict) -> dict:
    return {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in args.items()}


@pytest.mark.parametrize("name", sorted(set(BAD_INPUTS) - {"meta offset"}))
def test_fake_kernel_rejects_what_the_cpu_kernel_rejects(name):
    """The fake kernel (meta tensors, torch.compile, export) must not return a shape for arguments the
    real kernels reject; the expected messages are the C++ ones, checked on the CPU above."""
    args = good_args()
    change, message = BAD_INPUTS[name]
    change(args)
    with pytest.raises((RuntimeError, ValueError, TypeError), match=message):
        rcm_fsad_ops.deform_conv2d(**on_meta(args))


@pytest.mark.parametrize("geometry, out_size", [(dict(dilation=(2**63 - 1, 1), padding=1), (9, 6)),
                                                (dict(padding=(2**63 - 1, 0)), (1, 4))],
                         ids=["dilation", "padding"])
def test_padding_or_dilation_that_would_wrap_int64_is_an_error(geometry, out_size):
    """A 5x6 input and a 3x3 kernel: the output size computed in int64 would wrap to out_size (kernel rows
    2^63 - 1 apart, or an input padded by that much), which the offset has; the op must refuse, not
    sample wrapped positions. The fake kernel computes the sizes exactly, and rejects the offset's."""
    args = dict(input=torch.randn(1, 1, 5, 6), offset=torch.zeros(1, 18, *out_size), weight=torch.ones(1, 1, 3, 3),
                **geometry)
    with pytest.raises(RuntimeError, match=r"padding and dilation small enough .* fit in 64 bits"):
        rcm_fsad_ops.deform_conv2d(**args)
    with pytest.raises(RuntimeError, match=r"the output would be empty|expected offset of shape"):
        rcm_fsad_ops.deform_conv2d(**on_meta(args))


def test_fake_kernel_rejects_an_input_without_channels():
    args = on_meta(good_args())
    args.update(input=args["input"][:, :0], weight=args["weight"][:, :1])
    with pytest.raises(RuntimeError, match=r"expected input to have at least one channel"):
        rcm_fsad_ops.deform_conv2d(**args)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fake_kernel_output_matches_torchvision(name):
    case = CASES[name]
    t = case.tensors(torch.float32, "cpu")
    args = dict(input=t["input"], offset=t["offset"], weight=t["weight"], bias=t["bias"], mask=t["mask"],
                **case.kwargs())
    expected = torchvision.ops.deform_conv2d(**args)
    got = rcm_fsad_ops.deform_conv2d(**on_meta(args))
    assert got.device.type == "meta"
    assert (got.shape, got.dtype) == (expected.shape, expected.dtype)


# Shapes on which .contiguous() keeps strides other than torch.empty's: empty tensors, dimensions of size 1.
DEGENERATE = {
    "batch0": DeformCase(batch=0),
    "output_1x1": DeformCase(height=3, width=3, padding=(0, 0)),
    "no_output_channels": DeformCase(out_channels=0),
    "one_channel": DeformCase(in_channels=1, out_channels=3),
}


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", sorted(DEGENERATE))
def test_fake_kernels_report_the_real_strides(name, channels_last):
    """Shapes, dtypes and strides of the forward's and the backward's outputs, real (CPU) and fake."""
    case = DEGENERATE[name]
    inp, off, w, m, b, *geometry = op_args(case, "cpu", requires_grad=False)
    if channels_last:
        inp = inp.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(case.batch, case.out_channels, *case.out_size, dtype=torch.float64)
    calls = [(torch.ops.rcm_fsad.deform_conv2d.default, (inp, off, w, m, b, *geometry)),
             (torch.ops.rcm_fsad.deform_conv2d_backward.default, (grad, inp, off, w, m, *geometry))]
    for op, args in calls:
        real = op(*args)
        with FakeTensorMode() as mode:
            fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
        real, fake = (list(r) if isinstance(r, tuple) else [r] for r in (real, fake))
        assert [(t.shape, t.dtype, t.stride()) for t in fake] == [(t.shape, t.dtype, t.stride()) for t in real]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", sorted(DEGENERATE) + ["basic"])
def test_results_are_not_views(name, channels_last, device):
    """Every result of the forward and the backward is a tensor of its own, not a view of a buffer the
    kernels wrote: autograd refuses in-place changes to a custom op's output that is a view."""
    case = CASES["basic"] if name == "basic" else DEGENERATE[name]
    inp, off, w, m, b, *geometry = op_args(case, device, requires_grad=False)
    if channels_last:
        inp = inp.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(case.batch, case.out_channels, *case.out_size, dtype=torch.float64, device=device)
    results = [torch.ops.rcm_fsad.deform_conv2d.default(inp, off, w, m, b, *geometry),
               *torch.ops.rcm_fsad.deform_conv2d_backward.default(grad, inp, off, w, m, *geometry)]
    assert [t._is_view() for t in results] == [False] * 5


@pytest.mark.parametrize("device_type", ["cpu", "meta"])
@pytest.mark.parametrize("bad", ["grad_output shape", "mask shape"])
def test_backward_rejects_bad_shapes(bad, device_type):
    case = CASES["basic"]
    inp, off, w, m, _, *geometry = op_args(case, device_type, requires_grad=False)
    grad = torch.randn(case.batch, case.out_channels, *case.out_size, dtype=torch.float64, device=device_type)
    if bad == "grad_output shape":
        grad, message = grad[..., :-1], r"expected grad_output of shape \(2, 6, 7, 8\)"
    else:
        m, message = m[:, :8], r"expected mask of shape \(2, 9, 7, 8\)"
    with pytest.raises(RuntimeError, match=message):
        torch.ops.rcm_fsad.deform_conv2d_backward.default(grad, inp, off, w, m, *geometry)


def test_torch_compile_dynamic_shapes():
    """With dynamic shapes the fake kernel's checks see symbolic sizes; one graph must serve several
    sizes, and a wrong offset size must still be rejected while tracing."""
    def layer(x, offset, weight, mask):
        return rcm_fsad_ops.deform_conv2d(x, offset, weight, stride=(1, 2), padding=1, mask=mask)

    backend = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend=backend)
    # sizes unlike the batch, channel and kernel sizes, which duck sizing would tie them to
    for height, width in [(10, 13), (12, 15), (13, 21)]:
        t = CASES["basic"].with_(height=height, width=width, stride=(1, 2)).tensors(torch.float32)
        args = (t["input"], t["offset"], t["weight"], t["mask"])
        torch.testing.assert_close(compiled(*args), torchvision.ops.deform_conv2d(
            t["input"], t["offset"], t["weight"], stride=(1, 2), padding=1, mask=t["mask"]))
    assert backend.frame_count == 1
    with pytest.raises(RuntimeError, match=r"expected offset of shape"):
        compiled(t["input"], t["offset"][..., :-1], t["weight"], t["mask"][..., :-1])


def test_cpu_rejects_other_float_types_with_a_clear_error():
    args = {k: v.to(torch.float8_e4m3fn) if isinstance(v, torch.Tensor) else v for k, v in good_args().items()}
    with pytest.raises(RuntimeError, match="CPU kernel supports float32, float64, float16 and bfloat16"):
        rcm_fsad_ops.deform_conv2d(**args)


def cuda_toolkit_present() -> bool:
    """Whether the build should have compiled CUDA: asked here, not of tools/build_env.py, so that a broken
    search there fails the test below instead of skipping it."""
    if os.environ.get("RCM_FSAD_CPU_ONLY", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if torch.version.cuda is None:
        return False
    return bool(os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or shutil.which("nvcc")
                or os.path.exists("/usr/local/cuda/bin/nvcc"))


@pytest.mark.skipif(not cuda_toolkit_present(), reason="no CUDA toolkit on this machine: CPU-only build")
def test_cuda_kernels_compiled_and_registered():
    """On any machine with a CUDA toolkit the CUDA sources must have compiled into the extension."""
    assert _C.built_with_cuda == 1
    kernels = rcm_fsad_ops.info()["kernels"]
    assert kernels["deform_conv2d"] == ["CPU", "CUDA", "Autograd", "AutocastCPU", "AutocastCUDA"]
    assert kernels["deform_conv2d_backward"] == ["CPU", "CUDA", "Autograd"]
    assert rcm_fsad_ops.info()["cuda_arch_list"]
    assert len(rcm_fsad_ops.info()["gpu_archs"]) == torch.cuda.device_count()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_rejects_an_unknown_forward_algorithm(monkeypatch):
    monkeypatch.setenv("RCM_FSAD_DEFORM_CONV_ALGO", "fastest")
    t = CASES["basic"].tensors(torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="RCM_FSAD_DEFORM_CONV_ALGO must be 'implicit_gemm', "
                                           "'implicit_gemm_wgmma', 'implicit_gemm_wmma', 'implicit_gemm_sync', "
                                           "'implicit_gemm_simt', "
                                           "'columns' or 'autotune', got 'fastest'"):
        rcm_fsad_ops.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], padding=1, mask=t["mask"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "deterministic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replays_forward_and_backward(dtype, deterministic, monkeypatch):
    """Forward and backward capture into one CUDA graph (nothing in them waits on the device, reads a
    value back or allocates outside the graph's pool), and a replay on new values copied into the
    captured tensors gives what an eager call on those values gives: the forward the same bits, the
    gradients the same up to rounding where the input gradient sums with atomics (in no fixed order),
    and the same bits under torch.use_deterministic_algorithms, whose backward sorts the samples'
    corners and bounds its gather by them on the device."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what some PyTorch versions ask for cuBLAS
    runs_as(deterministic, graph_replays_forward_and_backward, dtype, exact_gradients=deterministic)


def graph_replays_forward_and_backward(dtype: torch.dtype, exact_gradients: bool) -> None:
    case = CASES["groups2_offset_groups3"]
    names = ("input", "offset", "weight", "bias", "mask")

    def tensors(seed: int) -> dict:
        t = case.with_(seed=seed).tensors(torch.float32, "cuda")
        return {k: t[k].to(dtype).requires_grad_(True) for k in names}

    def run(t: dict, cotangent: torch.Tensor) -> torch.Tensor:
        out = rcm_fsad_ops.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"],
                                         **case.kwargs())
        out.backward(cotangent)
        return out

    static = tensors(seed=1)
    cotangent = torch.randn(2, 8, *case.out_size, device="cuda").to(dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
        for _ in range(2):
            run(static, cotangent)
    torch.cuda.current_stream().wait_stream(side)
    for t in static.values():
        t.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run(static, cotangent)

    fresh = tensors(seed=2)
    with torch.no_grad():
        for k in names:
            static[k].copy_(fresh[k])
    graph.replay()
    torch.cuda.synchronize()
    eager = run(fresh, cotangent)
    assert not torch.equal(captured, run(tensors(seed=1), cotangent).detach()), "the replay must see the new values"
    torch.testing.assert_close(captured, eager.detach(), rtol=0, atol=0)
    tolerance = {"rtol": 0, "atol": 0} if exact_gradients else {}
    for k in names:
        torch.testing.assert_close(static[k].grad, fresh[k].grad, **tolerance,
                                   msg=lambda m, k=k: f"grad of {k}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_stays_in_low_precision(dtype):
    """Under autocast the op runs its low-precision kernel on every tensor cast to that dtype (the same
    bits as casting by hand), and the result is that precision's approximation of the float64 one on the
    cast inputs (judged as test_low_precision_error_is_that_of_its_rounding judges it)."""
    t = CASES["basic"].tensors(torch.float32, "cuda")
    names = ("input", "offset", "weight", "bias", "mask")
    with torch.autocast("cuda", dtype=dtype):
        out = rcm_fsad_ops.deform_conv2d(*(t[k] for k in names[:4]), padding=1, mask=t["mask"])
    assert out.dtype == dtype
    low = {k: t[k].to(dtype) for k in names}
    by_hand = rcm_fsad_ops.deform_conv2d(*(low[k] for k in names[:4]), padding=1, mask=low["mask"])
    torch.testing.assert_close(out, by_hand, rtol=0, atol=0)
    exact_inputs = {k: low[k].double() for k in names}
    exact = torchvision.ops.deform_conv2d(*(exact_inputs[k] for k in names[:4]), padding=1, mask=exact_inputs["mask"])
    precision = {torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    assert_output_error_is_that_of_its_rounding(CASES["basic"], exact_inputs, exact, out, precision)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "no_onednn"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_autocast_runs_in_bfloat16_where_it_multiplies_so_else_in_float32(dtype, onednn, monkeypatch):
    """CPU autocast runs the op in bfloat16 where a bfloat16 forward multiplies in bfloat16 (the CPU has
    AVX512-BF16 and oneDNN is on: info()'s cpu_bfloat16_gemms), and otherwise in float32, where the CPU
    kernels compute anyway: every argument cast to that dtype (the same bits as casting by hand), whatever
    mix of dtypes it gets, where torchvision has no CPU policy and fails on mixed dtypes. So the layer
    that predicts its offsets with a conv2d, which autocast runs in 16 bits, works under it, forward and
    backward: zero-initialised, its 16-bit offsets (0) and mask logits (0) are exact, so its output is the
    one without autocast (in float32 the same bits; in bfloat16 up to its rounding)."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", onednn)
    runs_in = torch.bfloat16 if dtype == torch.bfloat16 and rcm_fsad_ops.info()["cpu_bfloat16_gemms"] else torch.float32
    if runs_in == torch.bfloat16:
        assert onednn and "avx512_bf16" in cpu_flags()
    t = CASES["basic"].tensors(torch.float32)
    names = ("input", "offset", "weight", "bias", "mask")
    mixed = dict(t, offset=t["offset"].to(dtype), mask=t["mask"].to(dtype))  # as an autocast conv2d gives them
    with torch.autocast("cpu", dtype=dtype):
        out = rcm_fsad_ops.deform_conv2d(*(mixed[k] for k in names[:4]), padding=1, mask=mixed["mask"])
    by_hand = rcm_fsad_ops.deform_conv2d(*(mixed[k].to(runs_in) for k in names[:4]), padding=1,
                                         mask=mixed["mask"].to(runs_in))
    assert out.dtype == runs_in
    torch.testing.assert_close(out, by_hand, rtol=0, atol=0)

    layer = ModulatedDeformConv2dWithOffsetPredictor(4, 6, 3, padding=1)
    x = t["input"].clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
    y.sum().backward()
    assert y.dtype == runs_in and x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32
    exact = layer(t["input"])
    if runs_in == torch.float32:
        torch.testing.assert_close(y, exact, rtol=0, atol=0)
    else:
        # Inputs, weights and columns rounded to 8 bits, sums of 36 products of both signs, the output rounded:
        # 0.40 eps of the largest value in that rounding done by hand on this layer.
        torch.testing.assert_close(y.float(), exact, rtol=0, atol=4 * torch.finfo(dtype).eps * exact.abs().max().item())


def test_info_reports_build(monkeypatch):
    values = rcm_fsad_ops.info()
    assert values["cpu_parallel"], "built without OpenMP: the CPU kernels' at::parallel_for runs serially"
    assert values["kernels"]["deform_conv2d"][0] == "CPU"
    # the backends come from the build flag, the kernels from the dispatcher: they must agree
    assert values["backends"] == [k for k in values["kernels"]["deform_conv2d"] if k in ("CPU", "CUDA")]
    flags = cpu_flags()
    assert values["cpu_capability"] == ("avx2+fma" if {"avx2", "fma"} <= flags else "default"), flags
    assert values["cpu_bfloat16_gemms"] == ("avx512_bf16" in flags and torch.backends.mkldnn.is_available()
                                            and torch.backends.mkldnn.enabled), flags
    onednn = torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
    assert values["cpu_float32_gemms"] == ("onednn" if onednn else "blas")
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert rcm_fsad_ops.info()["cpu_bfloat16_gemms"] is False
    assert rcm_fsad_ops.info()["cpu_float32_gemms"] == "blas"
    # the wgmma kernel runs only on a GPU of compute capability 9.0 (test_cuda_info_says_where_wgmma_runs)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        assert values["wgmma"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_info_says_where_wgmma_runs(monkeypatch):
    """info()["wgmma"]: never on a GPU other than compute capability 9.0; surely on one, where the build has
    sm_90a code and no plain sm_90 code the driver might load instead (the default 9.0a build); never
    with RCM_FSAD_DISABLE_WGMMA=1."""
    values = rcm_fsad_ops.info()
    archs = set(values["cuda_arch_list"])
    hopper = torch.cuda.get_device_capability() == (9, 0)
    switched_off = os.environ.get("RCM_FSAD_DISABLE_WGMMA", "") not in ("", "0")
    if not hopper:
        assert values["wgmma"] is False
    elif "9.0a" in archs and not {"9.0", "9.0+PTX"} & archs and not switched_off:
        assert values["wgmma"] is True
    monkeypatch.setenv("RCM_FSAD_DISABLE_WGMMA", "1")
    assert rcm_fsad_ops.info()["wgmma"] is False


def cpu_flags() -> set:
    """The CPU's feature flags as Linux lists them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def test_info_reports_the_current_thread_count():
    changed = 1 if torch.get_num_threads() != 1 else 2
    with threads(changed):
        assert rcm_fsad_ops.info()["threads"] == changed
