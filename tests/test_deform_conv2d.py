"""deform_conv2d against torchvision and the float64 reference: values and all five gradients."""
from __future__ import annotations

import contextlib
import os
from dataclasses import replace

import pytest
import torch
import torchvision

import rcm_fsad_ops
from benchmarks.environment import tf32_set_to
from rcm_fsad_ops import reference
from tests.deform_cases import CASES, DeformCase

def run_with_grads(fn, case: DeformCase, tensors: dict, grad_seed: int = 1, cotangent_dtype=None, cotangent=None):
    """Output and the gradients of <output, cotangent> for every tensor argument: the given cotangent, or a
    random one, rounded to cotangent_dtype first when given (so that a float64 run can share a 16-bit
    one's)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in tensors.items() if v is not None}
    args = {k: leaves.get(k) for k in tensors}
    out = fn(args["input"], args["offset"], args["weight"], args["bias"], mask=args["mask"], **case.kwargs())
    if cotangent is None:
        g = torch.Generator().manual_seed(grad_seed)
        cotangent = torch.randn(out.shape, generator=g, dtype=torch.float64).to(cotangent_dtype or out.dtype).to(out)
    out.backward(cotangent)
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def assert_matches(ours, theirs, rtol, atol, equal_nan=False):
    out, grads = ours
    out_ref, grads_ref = theirs
    torch.testing.assert_close(out, out_ref, rtol=rtol, atol=atol, equal_nan=equal_nan, msg=lambda m: f"output: {m}")
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=rtol, atol=atol, equal_nan=equal_nan,
                                   msg=lambda m, name=name: f"grad of {name}: {m}")


def runs_as(deterministic: bool, fn, *args, **kwargs):
    """fn(*args, **kwargs) with torch.use_deterministic_algorithms(deterministic), restored after."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torchvision_float64(name, device):
    case = CASES[name]
    tensors = case.tensors(torch.float64, device)
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    theirs = run_with_grads(torchvision.ops.deform_conv2d, case, tensors)
    assert_matches(ours, theirs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference_float64(name, device):
    case = CASES[name]
    tensors = case.tensors(torch.float64, device)
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    oracle = run_with_grads(reference.deform_conv2d, case, tensors)
    assert_matches(ours, oracle, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["basic", "groups2_offset_groups3", "depthwise", "depthwise_multiplier", "far_offsets",
                                  "wide_channels"])
def test_float32_error_is_that_of_float32_arithmetic(name, device):
    """Judged against float64: ours in float32 (IEEE: TF32 off) is no worse than torchvision in float32
    (times 4, or one float32 epsilon of the largest value)."""
    assert_float32_error_is_that_of_float32_arithmetic(CASES[name], device)


def assert_float32_error_is_that_of_float32_arithmetic(case: DeformCase, device: str):
    exact = run_with_grads(reference.deform_conv2d, case, case.tensors(torch.float64, device))
    with tf32_set_to(False):
        ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, case.tensors(torch.float32, device))
        theirs = run_with_grads(torchvision.ops.deform_conv2d, case, case.tensors(torch.float32, device))
    exact_values = {"output": exact[0], **exact[1]}

    def error(result):
        out, grads = result
        return {key: (value.double() - exact_values[key]).abs().max().item()
                for key, value in {"output": out, **grads}.items()}

    ours_err, theirs_err = error(ours), error(theirs)
    eps = torch.finfo(torch.float32).eps
    for key, err in ours_err.items():
        floor = eps * exact_values[key].abs().max().item()
        assert err <= 4 * theirs_err[key] + floor, (key, err, theirs_err[key])


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> the nearest TF32 value (10 mantissa bits, ties away from zero, like cvt.rna)."""
    bits = x.float().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


# precision -> (tensor dtype, what the tensor-core MMA reads, tolerance of the TF32 gradients relative
# to their largest magnitude: cuBLAS may round or truncate its TF32 operands, which is not modelled).
LOW_PRECISIONS = {
    "float16": (torch.float16, lambda x: x.half().double(), None),
    "bfloat16": (torch.bfloat16, lambda x: x.bfloat16().double(), None),
    "tf32": (torch.float32, lambda x: round_to_tf32(x).double(), 5e-3),
}


class _RoundedBuffer(torch.autograd.Function):
    """Identity that rounds to `dtype` on the way back, and on the way forward too where `values`: a
    buffer a backward keeps in a 16-bit dtype (the sampled columns forward, their gradient backward)."""

    @staticmethod
    def forward(ctx, x, dtype, values):
        ctx.dtype = dtype
        return x.to(dtype).to(x.dtype) if values else x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.dtype).to(grad.dtype), None, None


def columns_rounded_to(dtype, values: bool = True):
    """The reference (float64) with the columns' gradient rounded to dtype, and the columns too where
    `values`, as the CUDA backward's columns path stores them (the CPU's bfloat16 GEMMs: the gradient
    only); the rest exact."""
    def fn(input, offset, weight, bias, stride, padding, dilation, mask):
        groups = input.shape[1] // weight.shape[1]
        columns = reference.sampled_columns(input, offset, weight.shape[2:], groups, stride, padding, dilation,
                                            mask=mask)
        out_size = reference.output_size(input.shape[2:], weight.shape[2:], stride, padding, dilation)
        return reference.columns_times_weight(_RoundedBuffer.apply(columns, dtype, values), weight, bias, out_size)
    return fn


def rounded_operands_output(case: DeformCase, exact_inputs: dict, mma_input, dtype) -> torch.Tensor:
    """The float64 output of exact_inputs with what a tensor-core kernel (or the CPU's bfloat16 GEMMs) must
    round rounded: the sampled columns and the weight by mma_input, the output to dtype."""
    groups = case.in_channels // exact_inputs["weight"].shape[1]
    columns = reference.sampled_columns(exact_inputs["input"], exact_inputs["offset"], case.kernel, groups,
                                        mask=exact_inputs["mask"], **case.kwargs())
    out_size = reference.output_size((case.height, case.width), case.kernel, **case.kwargs())
    return reference.columns_times_weight(mma_input(columns), mma_input(exact_inputs["weight"]),
                                          exact_inputs["bias"], out_size).to(dtype).double()


@pytest.mark.parametrize("precision", sorted(LOW_PRECISIONS))
@pytest.mark.parametrize("name", ["basic", "groups2_offset_groups3", "far_offsets", "wide_channels"])
def test_low_precision_error_is_that_of_its_rounding(name, precision, device):
    """float16, bfloat16, and float32 with TF32 allowed (CUDA only). Both ours and a reference that
    rounds what a tensor-core kernel must round (the sampled columns and the weight to the MMA input
    type, the output to the tensor dtype) and computes the rest in float64 are measured against the
    float64 result on the same (rounded) inputs: ours may add float32 accumulation error only. (The
    CPU computes float16, and bfloat16 where it does not multiply it natively, in float32, rounding only the
    output: test_cpu_bfloat16_forward_multiplies_in_bfloat16_where_the_cpu_does.) The 16-bit gradients likewise,
    against the float64 ones for the same rounded cotangent: the reference rounds what the backward
    must (backward_rounding_model), then its results."""
    if device == "cpu" and precision == "tf32":
        pytest.skip("TF32 is a CUDA setting")
    assert_low_precision_error_is_that_of_its_rounding(CASES[name], precision, device)


def takes_cpu_bfloat16_gemms(case: DeformCase) -> bool:
    """Whether a bfloat16 call of the case multiplies in bfloat16 on this CPU (README: CPU): where the CPU
    does so natively and oneDNN is on, a layer of at least 4096 multiply-adds a conv group and output pixel
    whose two GEMMs reduce over whole multiples of 32 (a group's kernel points x input channels, and its
    output channels)."""
    kh, kw = case.kernel
    reduction = kh * kw * (case.in_channels // case.groups)
    outputs = case.out_channels // case.groups
    return (rcm_fsad_ops.info()["cpu_bfloat16_gemms"] and reduction * outputs >= 4096 and reduction % 32 == 0
            and outputs % 32 == 0)


def backward_rounding_model(case: DeformCase, dtype, device: str):
    """The float64 backward that rounds what ours must: on CUDA the columns and their gradient (16-bit
    buffers); on the CPU, in bfloat16 where it takes bfloat16 GEMMs (takes_cpu_bfloat16_gemms), the
    columns' gradient (test_cpu_bfloat16_backward_takes_bfloat16_gemms_for_the_columns_gradient); else
    nothing, the rest computing in float32."""
    if device != "cpu":
        return columns_rounded_to(dtype)
    if dtype == torch.bfloat16 and takes_cpu_bfloat16_gemms(case):
        return columns_rounded_to(dtype, values=False)
    return reference.deform_conv2d


def assert_output_error_is_that_of_its_rounding(case: DeformCase, exact_inputs: dict, exact: torch.Tensor,
                                                out: torch.Tensor, precision: str, factor: float = 2):
    """out, ours on inputs in LOW_PRECISIONS[precision]'s dtype (exact_inputs: the same values in float64),
    against exact, their float64 output: its error at most factor times that of rounded_operands_output, plus
    float32 accumulation's."""
    dtype, mma_input, _ = LOW_PRECISIONS[precision]
    same = rounded_operands_output(case, exact_inputs, mma_input, dtype)
    ours_err = (out.double() - exact).abs().max().item()
    same_err = (same - exact).abs().max().item()
    scale = exact.abs().max().item()
    assert ours_err <= factor * same_err + 1e-5 * scale, (ours_err, same_err, scale)


def assert_low_precision_error_is_that_of_its_rounding(case: DeformCase, precision: str, device: str):
    dtype, mma_input, grad_tol = LOW_PRECISIONS[precision]
    low = case.tensors(dtype, device)
    exact_inputs = {k: None if v is None else v.double() for k, v in low.items()}
    exact = run_with_grads(reference.deform_conv2d, case, exact_inputs, cotangent_dtype=dtype)
    with tf32_set_to(precision == "tf32"):
        ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, low)

    # The columns path (which autotune may choose) hands TF32 to cuBLAS, which may truncate rather than
    # round: up to twice the rounding error.
    columns_possible = os.environ.get("RCM_FSAD_DEFORM_CONV_ALGO") in ("columns", "autotune")
    factor = 4 if precision == "tf32" and columns_possible else 2
    assert_output_error_is_that_of_its_rounding(case, exact_inputs, exact[0], ours[0], precision, factor)
    if grad_tol is not None:
        for key, grad in ours[1].items():
            err = (grad.double() - exact[1][key]).abs().max().item()
            assert err <= grad_tol * exact[1][key].abs().max().item(), (key, err)
        return
    model = backward_rounding_model(case, dtype, device)
    same_grads = run_with_grads(model, case, exact_inputs, cotangent_dtype=dtype)[1]
    for key, grad in ours[1].items():
        truth = exact[1][key]
        ours_err = (grad.double() - truth).abs().max().item()
        same_err = (same_grads[key].to(dtype).double() - truth).abs().max().item()
        assert ours_err <= 2 * same_err + 1e-5 * truth.abs().max().item(), (key, ours_err, same_err)


# Layers where a bfloat16 forward on a CPU that multiplies bfloat16 takes bfloat16 GEMMs
# (takes_cpu_bfloat16_gemms): 9 x 64 and 16 x 66 (channel runs that are not whole vectors) products a
# group's output channel, times 32 of them.
BFLOAT16_GEMM_CASES = {
    "basic": DeformCase(in_channels=64, out_channels=32, height=6, width=5),
    "no_mask": DeformCase(in_channels=64, out_channels=32, height=6, width=5, use_mask=False),
    "no_bias": DeformCase(in_channels=64, out_channels=32, height=6, width=5, use_bias=False),
    "wide_channels": DeformCase(in_channels=66, out_channels=32, height=5, width=5, kernel=(4, 4), seed=3),
    "one_pixel_images": DeformCase(batch=5, in_channels=64, out_channels=32, height=3, width=3, padding=(0, 0),
                                   seed=2),
}


@pytest.mark.skipif(not rcm_fsad_ops.info()["cpu_bfloat16_gemms"],
                    reason="the CPU does not multiply bfloat16 natively (AVX512-BF16), or oneDNN is off")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", sorted(BFLOAT16_GEMM_CASES))
def test_cpu_bfloat16_forward_multiplies_in_bfloat16_where_the_cpu_does(name, layout, monkeypatch):
    """Where the CPU multiplies bfloat16 natively and oneDNN is on, a bfloat16 forward of a layer that takes
    bfloat16 GEMMs (takes_cpu_bfloat16_gemms) rounds its sampled columns to bfloat16 for GEMMs that sum in
    float32, as the CUDA tensor-core kernels do; with oneDNN off it computes in float32 and rounds the output only: the
    same bits as a float32 call rounded, which the bfloat16 GEMMs' output is not. Their error against the
    float64 output of the same inputs is at most twice that of a float64 computation that rounds the
    columns and the weight to bfloat16 (plus float32's summation), in either layout of the input (the output
    keeps it), with images of one output pixel too (an NCHW output that is NHWC rows)."""
    case = BFLOAT16_GEMM_CASES[name]
    low = case.tensors(torch.bfloat16)
    if layout == "channels_last":
        low["input"] = low["input"].contiguous(memory_format=torch.channels_last)

    def forward(tensors, fn=rcm_fsad_ops.deform_conv2d):
        return fn(tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"], mask=tensors["mask"],
                  **case.kwargs())

    ours = forward(low)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert not rcm_fsad_ops.info()["cpu_bfloat16_gemms"]
    # With oneDNN off the float32 call's GEMMs are BLAS's too (onednn_gemms.h).
    in_float = forward({k: None if v is None else v.float() for k, v in low.items()}).bfloat16()
    assert ours.dtype == torch.bfloat16 and not torch.equal(ours, in_float)
    assert ours.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    assert torch.equal(forward(low), in_float)

    exact_inputs = {k: None if v is None else v.double() for k, v in low.items()}
    exact = forward(exact_inputs, reference.deform_conv2d)
    assert_output_error_is_that_of_its_rounding(case, exact_inputs, exact, ours, "bfloat16")


# Layers whose CPU products with the weight are GEMMs (not the group loops): 2304 and 576 values a reduction.
FLOAT32_GEMM_CASES = {
    "wide": DeformCase(in_channels=256, out_channels=48, height=7, width=6, seed=4),
    "groups": DeformCase(in_channels=128, out_channels=64, height=6, width=7, groups=2, offset_groups=2, seed=5),
}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch was built without oneDNN")
@pytest.mark.parametrize("copies", ["default", "none"])
@pytest.mark.parametrize("name", sorted(FLOAT32_GEMM_CASES))
def test_cpu_float32_gemms_are_as_accurate_in_onednn_as_in_blas(name, copies, two_threads, monkeypatch):
    """The CPU's float32 GEMMs run in oneDNN where it is on (csrc/cpu/onednn_gemms.h), in BLAS where it is
    off, and the two outputs differ (the gradients may not: at these sizes both libraries can add their short
    sums in the same order). Either way the output, the input gradient (the columns' gradient's product) and
    the weight gradient (its sums over the rows) are within twice the RMS error of torchvision's float32,
    whose GEMMs are BLAS's, against float64 (measured here: oneDNN's 0.9-1.6 times). On 2 threads, with the
    weight gradient in the first pass (the default budget of copies) and in a second pass (no copies)."""
    if copies == "none":
        monkeypatch.setenv("RCM_FSAD_CPU_COPY_BYTES", "0")
    case = FLOAT32_GEMM_CASES[name]
    single = case.tensors(torch.float32)
    exact = run_with_grads(reference.deform_conv2d, case, {k: None if v is None else v.double()
                                                         for k, v in single.items()}, cotangent_dtype=torch.float32)
    theirs = run_with_grads(torchvision.ops.deform_conv2d, case, single)
    assert rcm_fsad_ops.info()["cpu_float32_gemms"] == "onednn"
    onednn = run_with_grads(rcm_fsad_ops.deform_conv2d, case, single)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    assert rcm_fsad_ops.info()["cpu_float32_gemms"] == "blas"
    blas = run_with_grads(rcm_fsad_ops.deform_conv2d, case, single)
    assert not torch.equal(onednn[0], blas[0])

    def rms_errors(result):
        out, grads = result
        exact_out, exact_grads = exact
        return [(t.double() - e).pow(2).mean().sqrt().item()
                for t, e in ((out, exact_out), (grads["input"], exact_grads["input"]),
                             (grads["weight"], exact_grads["weight"]))]

    for ours in (onednn, blas):
        for ours_err, their_err in zip(rms_errors(ours), rms_errors(theirs)):
            assert ours_err <= 2 * their_err, (ours_err, their_err)


@contextlib.contextmanager
def threads(count: int):
    """torch's thread count set to count, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def two_threads():
    """torch's thread count set to 2 for the test, restored after."""
    with threads(2):
        yield


@pytest.mark.skipif(not rcm_fsad_ops.info()["cpu_bfloat16_gemms"],
                    reason="the CPU does not multiply bfloat16 natively (AVX512-BF16), or oneDNN is off")
@pytest.mark.parametrize("copies", ["default", "none"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", sorted(BFLOAT16_GEMM_CASES))
def test_cpu_bfloat16_backward_takes_bfloat16_gemms_for_the_columns_gradient(name, layout, copies, two_threads,
                                                                               monkeypatch):
    """Where a bfloat16 forward takes bfloat16 GEMMs, so does its backward for the columns' gradient, rounded
    to bfloat16 as the CUDA backward's 16-bit buffer holds it; the rest computes in float32, the weight
    gradient's sums over all rows too. So the input, offset and mask gradients differ from a float32
    backward's rounded, and the weight gradient does not; with oneDNN off all four are that float32 backward's
    rounded, bit for bit. Each gradient's error against the float64 one of the same inputs and cotangent is
    at most twice that of a float64 backward that rounds the columns' gradient to bfloat16, then its
    results (plus float32's summation). On 2 threads, with the weight gradient in the first pass (the
    default budget of copies) and in a second pass (no copies)."""
    if copies == "none":
        monkeypatch.setenv("RCM_FSAD_CPU_COPY_BYTES", "0")
    case = BFLOAT16_GEMM_CASES[name]
    low = case.tensors(torch.bfloat16)
    if layout == "channels_last":
        low["input"] = low["input"].contiguous(memory_format=torch.channels_last)
    op_grads = ["input", "offset", "weight"] + (["mask"] if case.use_mask else [])

    def gradients(fn, tensors):
        grads = run_with_grads(fn, case, tensors, cotangent_dtype=torch.bfloat16)[1]
        return {k: grads[k] for k in op_grads}

    ours = gradients(rcm_fsad_ops.deform_conv2d, low)
    as_float = {k: None if v is None else v.float() for k, v in low.items()}
    in_float = {k: v.bfloat16() for k, v in gradients(rcm_fsad_ops.deform_conv2d, as_float).items()}
    for key in op_grads:
        assert ours[key].dtype == torch.bfloat16
        assert torch.equal(ours[key], in_float[key]) == (key == "weight"), key
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    without = gradients(rcm_fsad_ops.deform_conv2d, low)
    for key in op_grads:
        assert torch.equal(without[key], in_float[key]), key

    exact_inputs = {k: None if v is None else v.double() for k, v in low.items()}
    exact = gradients(reference.deform_conv2d, exact_inputs)
    same = gradients(columns_rounded_to(torch.bfloat16, values=False), exact_inputs)
    for key in op_grads:
        truth = exact[key]
        ours_err = (ours[key].double() - truth).abs().max().item()
        same_err = (same[key].to(torch.bfloat16).double() - truth).abs().max().item()
        assert ours_err <= 2 * same_err + 1e-5 * truth.abs().max().item(), (key, ours_err, same_err)


@pytest.mark.skipif(not rcm_fsad_ops.info()["cpu_bfloat16_gemms"],
                    reason="the CPU does not multiply bfloat16 natively (AVX512-BF16), or oneDNN is off")
@pytest.mark.parametrize("channels, gemms", [((64, 64), True), ((32, 96), False), ((72, 64), False),
                                             ((64, 72), False)],
                         ids=["4096_products", "3072_products", "72_inputs", "72_outputs"])
def test_cpu_bfloat16_gemms_take_4096_products_a_group_and_pixel_in_whole_steps_of_32(channels, gemms):
    """Below 4096 multiply-adds a group and output pixel a bfloat16 GEMM's fixed cost outweighs its rate, so
    a smaller layer computes in float32 (the same bits as a float32 call rounded) and a layer of 4096 takes
    the bfloat16 GEMMs (not those bits); so does one whose GEMMs reduce over a tail of fewer than 32 values
    (the forward's over 72 input channels, the backward's over 72 output channels), which oneDNN's AMX
    kernels read past (test_non_finite_bfloat16_inputs_as_torchvision_in_float32). 1x1 kernels, one group."""
    in_channels, out_channels = channels
    case = DeformCase(in_channels=in_channels, out_channels=out_channels, kernel=(1, 1), padding=(0, 0))
    assert takes_cpu_bfloat16_gemms(case) == gemms
    low = case.tensors(torch.bfloat16)

    def forward(tensors):
        return rcm_fsad_ops.deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"],
                                          mask=tensors["mask"], **case.kwargs())

    in_float = forward({k: None if v is None else v.float() for k, v in low.items()}).bfloat16()
    assert torch.equal(forward(low), in_float) != gemms


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", ["basic", "output_1x1", "output_1x1_depthwise_multiplier", "one_output_channel"])
def test_output_can_be_modified_in_place_before_backward(name, channels_last, device):
    """y.relu_() on the output, then backward, as an nn.ReLU(inplace=True) after the layer does in
    training: the output and the gradients are torchvision's. Images of one output pixel, whose NCHW
    strides are also those of NHWC rows, through the CPU's GEMMs and its group loops (nine images: tiles of
    several images on a few threads)."""
    case = {"basic": CASES["basic"], "output_1x1": DeformCase(height=3, width=3, padding=(0, 0)),
            "output_1x1_depthwise_multiplier": DeformCase(batch=9, height=3, width=3, padding=(0, 0), in_channels=8,
                                                          out_channels=16, groups=8),
            "one_output_channel": DeformCase(out_channels=1)}[name]
    tensors = case.tensors(torch.float64, device)
    if channels_last:
        tensors["input"] = tensors["input"].contiguous(memory_format=torch.channels_last)
    ours = run_with_grads(lambda *a, **k: rcm_fsad_ops.deform_conv2d(*a, **k).relu_(), case, tensors)
    theirs = run_with_grads(lambda *a, **k: torchvision.ops.deform_conv2d(*a, **k).relu_(), case, tensors)
    assert_matches(ours, theirs, rtol=1e-10, atol=1e-10)


def border_case_offsets(case: DeformCase) -> dict:
    """Offsets that put every sample exactly on an integer coordinate: on the -1 border, on the last
    row/column, inside, or beyond the image."""
    tensors = case.tensors(torch.float64)
    kh, kw = case.kernel
    out_h, out_w = case.out_size
    offset = tensors["offset"].view(case.batch, case.offset_groups, kh * kw, 2, out_h, out_w)
    oy = torch.arange(out_h, dtype=torch.float64).view(out_h, 1) * case.stride[0] - case.padding[0]
    ox = torch.arange(out_w, dtype=torch.float64).view(1, out_w) * case.stride[1] - case.padding[1]
    targets_y = torch.tensor([-1.0, 0.0, case.height - 1.0, case.height, -2.0, 2.0], dtype=torch.float64)
    targets_x = torch.tensor([-1.0, case.width - 1.0, 1.0, -1.0, case.width, 0.0], dtype=torch.float64)
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        ty = targets_y[(k + torch.arange(out_h * out_w)) % len(targets_y)].view(out_h, out_w)
        tx = targets_x[(2 * k + torch.arange(out_h * out_w)) % len(targets_x)].view(out_h, out_w)
        offset[:, :, k, 0] = ty - (oy + i * case.dilation[0])
        offset[:, :, k, 1] = tx - (ox + j * case.dilation[1])
    return tensors


# 19 channels: on the CPU, two whole vectorised steps of 8 channels a sample and a rest of 3.
@pytest.mark.parametrize("in_channels", [4, 19])
@pytest.mark.parametrize("use_mask", [True, False])
def test_samples_on_integer_coordinates_and_the_minus_one_border(use_mask, in_channels, device):
    case = DeformCase(height=5, width=6, use_mask=use_mask, in_channels=in_channels)
    tensors = {k: None if v is None else v.to(device) for k, v in border_case_offsets(case).items()}
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    theirs = run_with_grads(torchvision.ops.deform_conv2d, case, tensors)
    oracle = run_with_grads(reference.deform_conv2d, case, tensors)
    assert_matches(ours, theirs, rtol=1e-10, atol=1e-10)
    assert_matches(ours, oracle, rtol=1e-10, atol=1e-10)
    # torchvision's convention: the offset gradient on the -1 border is not zeroed.
    assert ours[1]["offset"].abs().sum() > 0


def test_border_gradient_by_hand(device):
    """One channel, 1x1 kernel, a sample at (-1, 0) on a 2x2 image [[a, b], [c, d]]:
    value 0; d/dy = a - 0 (inside corner (0, 0) minus the outside corner (-1, 0)); d/dx = 0, since the
    floor cell's row y = -1 is outside and its weight 1 - ly = 1 leaves only that row."""
    image = torch.tensor([[[[3.0, 5.0], [7.0, 11.0]]]], dtype=torch.float64, device=device)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64, device=device)
    offset = torch.zeros(1, 2, 2, 2, dtype=torch.float64, device=device)
    offset[0, 0, 0, 0] = -1.0  # output (0, 0) samples y = -1, x = 0
    offset.requires_grad_(True)
    out = rcm_fsad_ops.deform_conv2d(image, offset, weight)
    assert out[0, 0, 0, 0].item() == 0.0
    out[0, 0, 0, 0].backward()
    assert offset.grad[0, 0, 0, 0].item() == 3.0
    assert offset.grad[0, 1, 0, 0].item() == 0.0


@pytest.mark.parametrize("batch", [1, 33])
def test_batch_sizes(batch, device):
    case = DeformCase(batch=batch, in_channels=3, out_channels=2, height=5, width=4)
    tensors = case.tensors(torch.float64, device)
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    theirs = run_with_grads(torchvision.ops.deform_conv2d, case, tensors)
    assert_matches(ours, theirs, rtol=1e-10, atol=1e-10)


def test_batch_zero_gives_an_empty_output_and_zero_parameter_gradients(device):
    """Derived by hand: an empty batch has an empty output, and the weight and bias gradients are sums over
    no pixels, zero (torchvision's too). The input, offset and mask gradients are empty; each must still be
    given, in the input's dtype."""
    case = DeformCase(batch=0, in_channels=3, out_channels=2, height=5, width=4)
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, case.tensors(torch.float64, device))
    assert ours[0].shape == (0, 2, *case.out_size)
    assert sorted(ours[1]) == ["bias", "input", "mask", "offset", "weight"]
    for name, grad in ours[1].items():
        assert grad is not None and grad.dtype == torch.float64, name
    for name in ("weight", "bias"):
        assert torch.equal(ours[1][name], torch.zeros_like(ours[1][name])), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_no_output_channels_give_an_empty_output_and_zero_gradients(device, dtype):
    """Like torchvision: a weight of 0 output channels gives an empty output, and every gradient is zero.
    In float32 too, whose CPU GEMMs run elsewhere (oneDNN, where it is on)."""
    case = DeformCase(batch=2, in_channels=4, out_channels=0)
    tensors = case.tensors(dtype, device)
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    assert ours[0].shape == (2, 0) + case.out_size
    assert_matches(ours, run_with_grads(torchvision.ops.deform_conv2d, case, tensors), rtol=0, atol=0)


@pytest.mark.parametrize("case", [DeformCase(batch=0), DeformCase(out_channels=0),
                                  DeformCase(height=0, kernel=(1, 1), padding=(1, 1))],
                         ids=["batch0", "no_output_channels", "empty_image_padded"])
def test_reference_takes_empty_problems(case):
    """The oracle itself: torchvision's output for problems with nothing in them (an image of height 0
    padded to 2 rows samples only zeros)."""
    tensors = case.tensors(torch.float64)
    args = (tensors["input"], tensors["offset"], tensors["weight"], tensors["bias"])
    want = torchvision.ops.deform_conv2d(*args, mask=tensors["mask"], **case.kwargs())
    got = reference.deform_conv2d(*args, mask=tensors["mask"], **case.kwargs())
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("empty", ["height", "width"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_image_of_no_pixels_padded_samples_zeros(deterministic, empty, channels_last, device, monkeypatch):
    """An input of height 0 (width 0) padded to an output of 2 rows (columns): torchvision's output (the bias
    alone) and gradients, in the deterministic backward too (whose gather over the input's elements has none
    to gather into: it must not launch an empty grid). A width of 0 gives the rows' stride no relation to the
    pixels' (contiguous strides take it as 1), which the CPU's copies once asserted on."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what some PyTorch versions ask for cuBLAS
    height, width = (0, 5) if empty == "height" else (5, 0)
    case = DeformCase(batch=2, in_channels=3, out_channels=4, height=height, width=width, kernel=(1, 1),
                      padding=(1, 1), channels_last=channels_last)
    tensors = case.tensors(torch.float64, device)
    ours = runs_as(deterministic, run_with_grads, rcm_fsad_ops.deform_conv2d, case, tensors)
    assert ours[0].shape == (2, 4, height + 2, width + 2)
    # torchvision on the contiguous tensors of the same values: torchvision 0.26's backward of channels_last
    # empty images raises (an in-place write to memory it also reads).
    contiguous = case.with_(channels_last=False)
    theirs = run_with_grads(torchvision.ops.deform_conv2d, contiguous, contiguous.tensors(torch.float64, device))
    assert_matches(ours, theirs, rtol=0, atol=0)


def test_no_input_channels_is_an_error(device):
    """An input of 0 channels is rejected by name (torchvision divides by zero there and kills the process)."""
    case = DeformCase(batch=1)
    t = case.tensors(torch.float64, device)
    with pytest.raises(RuntimeError, match=r"expected input to have at least one channel"):
        rcm_fsad_ops.deform_conv2d(t["input"][:, :0], t["offset"], t["weight"], mask=t["mask"], **case.kwargs())


def test_cpu_images_of_2_to_the_31_pixels_are_an_error():
    """The CPU's sampling indexes an image's pixels in 32 bits: an image of 2^31 pixels (65536 x 32768, expanded
    from one element, so that nothing is allocated) is rejected by the forward and the backward before anything
    is read."""
    size = (1, 1, 2 ** 16, 2 ** 15)
    input = torch.zeros(1, 1, 1, 1).expand(size)
    offset = torch.zeros(1, 2, 1, 1).expand(1, 2, *size[2:])
    weight = torch.ones(1, 1, 1, 1)
    message = r"fewer than 2\^31 pixels \(height x width\), got input of 65536 x 32768"
    with pytest.raises(RuntimeError, match=message):
        rcm_fsad_ops.deform_conv2d(input, offset, weight)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.rcm_fsad.deform_conv2d_backward(input, input, offset, weight, None, (1, 1), (0, 0), (1, 1))


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_input", "transposed_offset"])
@pytest.mark.parametrize("name", ["basic", "groups2_offset_groups3", "depthwise_multiplier"])
def test_memory_layouts(layout, name, device):
    """Inputs in any layout; the output in the input's (on the CPU: written by the GEMMs, and by the group
    loops with one and several outputs a group). A sliced input's pixels are evenly spaced, a transposed one's
    are not (the CPU copies its images from each other way)."""
    case = CASES[name]
    tensors = case.tensors(torch.float64, device)
    expected = run_with_grads(torchvision.ops.deform_conv2d, case, tensors)
    if layout == "channels_last":
        tensors["input"] = tensors["input"].contiguous(memory_format=torch.channels_last)
        tensors["offset"] = tensors["offset"].contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        wide = torch.randn(case.batch, case.in_channels + 2, case.height, case.width * 2, dtype=torch.float64,
                           device=device)
        wide[:, 1:-1, :, ::2] = tensors["input"]
        tensors["input"] = wide[:, 1:-1, :, ::2]
        assert not tensors["input"].is_contiguous()
    elif layout == "transposed_input":
        tensors["input"] = tensors["input"].transpose(2, 3).contiguous().transpose(2, 3)
    else:
        tensors["offset"] = tensors["offset"].transpose(2, 3).contiguous().transpose(2, 3)
        tensors["mask"] = tensors["mask"].transpose(0, 1).contiguous().transpose(0, 1)
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    assert_matches(ours, expected, rtol=1e-10, atol=1e-10)
    if layout == "channels_last":
        assert ours[0].is_contiguous(memory_format=torch.channels_last)
    else:
        assert ours[0].is_contiguous()


@pytest.mark.parametrize("layout", ["channels_last", "expanded", "transposed", "one_column_channels_last"])
@pytest.mark.parametrize("name", ["basic", "groups2_wide", "depthwise_multiplier"])
def test_output_gradient_layouts(layout, name, device):
    """The output gradient in any layout, which the CPU backward reads a tile of rows at a time (as planes or
    rows, in the GEMMs' order or the group loops'): channels_last; expanded from a value a channel (a sum's
    gradient, strides 0); height and width transposed (pixels not evenly spaced: copied first); and
    channels_last with images of one column whose width has a stride no dense layout gives it (PyTorch
    ignores the strides of size-1 dimensions). Against torchvision's in float64."""
    case = CASES[name]
    if layout == "one_column_channels_last":
        case = replace(case, width=3, padding=(1, 0))
    tensors = case.tensors(torch.float64, device)
    out_shape = torchvision.ops.deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"],
                                              mask=tensors["mask"], **case.kwargs()).shape
    n, c, h, w = out_shape
    if layout == "channels_last":
        cotangent = torch.randn(out_shape, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    elif layout == "expanded":
        cotangent = torch.randn(1, c, 1, 1, dtype=torch.float64).expand(out_shape)
    elif layout == "transposed":
        cotangent = torch.randn(n, c, w, h, dtype=torch.float64).transpose(2, 3)
    else:
        assert w == 1
        cotangent = torch.randn(n * h * c, dtype=torch.float64).as_strided(out_shape, (h * c, 1, c, 7))
        assert cotangent.is_contiguous(memory_format=torch.channels_last) and cotangent.stride(3) == 7
    cotangent = cotangent.to(device)
    expected = run_with_grads(torchvision.ops.deform_conv2d, case, tensors, cotangent=cotangent.contiguous())
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors, cotangent=cotangent)
    assert_matches(ours, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("weight_layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("name", ["basic", "groups2_offset_groups3", "depthwise_multiplier"])
def test_weight_gradient_keeps_the_weights_layout(name, weight_layout, dtype, device):
    """The op's own weight gradient (torch.autograd.grad: no accumulation into .grad, which would give
    it the weight's strides anyway) is laid out as the weight, as conv2d's is: channels_last for a
    channels_last weight, which the op reads in place. Its values against torchvision's in float64 on
    the same values, within twice bfloat16's rounding of the largest for bfloat16."""
    case = CASES[name]
    tensors = case.tensors(dtype, device)
    tensors["weight"] = tensors["weight"].contiguous(memory_format=weight_layout)
    g = torch.Generator().manual_seed(3)
    cotangent = torch.randn(case.batch, case.out_channels, *case.out_size, generator=g, dtype=torch.float64)

    def weight_gradient(fn, t):
        leaves = {k: None if v is None else v.detach().clone().requires_grad_(k == "weight") for k, v in t.items()}
        out = fn(leaves["input"], leaves["offset"], leaves["weight"], leaves["bias"], mask=leaves["mask"],
                 **case.kwargs())
        return torch.autograd.grad(out, leaves["weight"], cotangent.to(out))[0]

    ours = weight_gradient(rcm_fsad_ops.deform_conv2d, tensors)
    theirs = weight_gradient(torchvision.ops.deform_conv2d,
                             {k: None if v is None else v.double() for k, v in tensors.items()})
    assert ours.dtype == dtype
    assert ours.is_contiguous(memory_format=weight_layout)
    tol = 1e-10 if dtype == torch.float64 else 2 ** -7 * theirs.abs().max().item()
    torch.testing.assert_close(ours.double(), theirs, rtol=0, atol=tol)


def test_non_finite_offsets_sample_zero(device):
    """A NaN or infinite offset samples zero, as an offset far outside the image does, and passes no
    gradient to that offset; never garbage. (torchvision returns NaN there.) The oracles: the same
    case with those offsets far outside, and the float64 reference."""
    case = DeformCase(batch=1)
    tensors = case.tensors(torch.float64, device)
    far = dict(tensors, offset=tensors["offset"].clone())
    far["offset"][0, 0, 1, 2] = 1e6
    far["offset"][0, 3, 2, 3] = -1e6
    bad = dict(tensors, offset=tensors["offset"].clone())
    bad["offset"][0, 0, 1, 2] = float("nan")
    bad["offset"][0, 3, 2, 3] = float("-inf")
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, bad)
    # the CUDA backward scatters the input gradient with atomics, whose order moves its last bits
    exact = 0 if device == "cpu" else 1e-12
    assert_matches(ours, run_with_grads(rcm_fsad_ops.deform_conv2d, case, far), rtol=exact, atol=exact)
    assert_matches(ours, run_with_grads(reference.deform_conv2d, case, bad), rtol=1e-10, atol=1e-10)
    assert ours[1]["offset"][0, 0, 1, 2] == 0 and ours[1]["offset"][0, 3, 2, 3] == 0


def test_infinite_mask_gives_torchvision_infinities(device):
    """An infinite mask at a sample with some corners in the image (positive inputs and weights): +inf
    at that output pixel, as torchvision has it, not NaN from the infinity meeting a corner outside
    the image; every other output unchanged. One sample on the padded border (three corners
    outside), one inside."""
    case = DeformCase(batch=1, in_channels=4, out_channels=3, height=5, width=6)
    t = case.tensors(torch.float64, device)
    t["input"] = t["input"].abs() + 0.1
    t["weight"] = t["weight"].abs() + 0.01
    t["offset"] = torch.full_like(t["offset"], 0.5)  # every sample half-way between pixels
    t["mask"][0, 0, 0, 0] = float("inf")  # kernel point (0, 0) of output (0, 0): at (-0.5, -0.5)
    t["mask"][0, 4, 2, 3] = float("inf")  # the centre point of output (2, 3): at (2.5, 3.5)
    args = (t["input"], t["offset"], t["weight"], t["bias"])
    want = torchvision.ops.deform_conv2d(*args, mask=t["mask"], **case.kwargs())
    got = rcm_fsad_ops.deform_conv2d(*args, mask=t["mask"], **case.kwargs())
    infinite = torch.zeros_like(want, dtype=torch.bool)
    infinite[0, :, 0, 0] = infinite[0, :, 2, 3] = True
    assert torch.equal(torch.isposinf(want), infinite)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def non_finite_case(case: DeformCase, device: str, dtype) -> tuple:
    """border_case_offsets' tensors with infinities and a NaN in the input's first row and column and inside
    it, and a random cotangent with an infinity of each sign: (tensors, cotangent) in dtype."""
    tensors = {k: None if v is None else v.to(device, dtype) for k, v in border_case_offsets(case).items()}
    image = tensors["input"]
    image[0, 0, 0, 2] = float("inf")
    image[0, 1, 3, 0] = float("-inf")
    image[1, 0, 0, 0] = float("nan")
    image[1, 1, 2, 3] = float("inf")
    cotangent = torch.randn(case.batch, case.out_channels, *case.out_size, generator=torch.Generator().manual_seed(3),
                            dtype=torch.float64).to(device, dtype)
    cotangent[0, 1, 2, 2] = float("inf")
    cotangent[1, 0, 0, 1] = float("-inf")
    return tensors, cotangent


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("in_channels", [4, 19])
@pytest.mark.parametrize("use_mask", [True, False])
def test_non_finite_inputs_and_gradients_as_torchvision(use_mask, in_channels, dtype, deterministic, device,
                                                        monkeypatch):
    """Every sample on an integer coordinate, on the -1 border, on the last row or column, inside or
    beyond the image, with infinities and a NaN in the input's first row and column and inside it,
    and infinities in the output's gradient: the output and every gradient are torchvision's, NaN for
    NaN and each infinity with its sign, by the default path (float32: split TF32 on sm_80+) and the
    deterministic backward. A sample exactly on the -1 border reads nothing (0, where its inside
    corners, of weight 0, hold an infinity: 0 x inf would be NaN), and the input gradient reaches no
    corner of weight 0 (0 x an infinite gradient would be NaN). With 19 channels the CPU backward's
    vectorised steps of 8 channels meet the infinities and the NaN, and its rest of 3 does not."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what some PyTorch versions ask for cuBLAS
    case = DeformCase(height=5, width=6, use_mask=use_mask, in_channels=in_channels)
    tensors, cotangent = non_finite_case(case, device, dtype)
    ours = runs_as(deterministic, run_with_grads, rcm_fsad_ops.deform_conv2d, case, tensors, cotangent=cotangent)
    theirs = run_with_grads(torchvision.ops.deform_conv2d, case, tensors, cotangent=cotangent)
    assert not torch.isfinite(theirs[0]).all() and not torch.isfinite(theirs[1]["input"]).all()
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert_matches(ours, theirs, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("channels", [(32, 32), (19, 24)], ids=["whole_steps", "tails"])
@pytest.mark.parametrize("use_mask", [True, False])
def test_non_finite_bfloat16_inputs_as_torchvision_in_float32(use_mask, channels, device):
    """The same samples, infinities, NaN and infinite output gradients in bfloat16 (on a CPU with AVX512-BF16
    through its bfloat16 GEMMs where it takes them, on CUDA through the tensor-core kernels), against
    torchvision on the same values in float32: NaN and each infinity where torchvision has them, in the
    output and every gradient, and the finite values within a few bfloat16 roundings of the largest.
    9 x 32 x 32 products a pixel take the CPU's bfloat16 GEMMs; 9 x 19 x 24 would too by their count, but
    reduce over tails of fewer than 32 values, which oneDNN's AMX kernels read past, so that a NaN in one
    output pixel's columns made NaN of its neighbour's output (uxlfoundation/oneDNN#5717): they compute
    in float32."""
    in_channels, out_channels = channels
    case = DeformCase(height=5, width=6, use_mask=use_mask, in_channels=in_channels, out_channels=out_channels)
    tensors, cotangent = non_finite_case(case, device, torch.bfloat16)
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors, cotangent=cotangent)
    theirs = run_with_grads(torchvision.ops.deform_conv2d, case,
                            {k: None if v is None else v.float() for k, v in tensors.items()}, cotangent=cotangent.float())
    assert not torch.isfinite(theirs[0]).all() and not torch.isfinite(theirs[1]["input"]).all()
    for name, got, want in [("output", ours[0], theirs[0])] + [(k, ours[1][k], theirs[1][k]) for k in theirs[1]]:
        got = got.float()
        for kind in (torch.isnan, torch.isposinf, torch.isneginf):
            assert torch.equal(kind(got), kind(want)), (name, kind.__name__)
        finite = torch.isfinite(want)
        scale = want[finite].abs().max().item()
        torch.testing.assert_close(got[finite], want[finite], rtol=0, atol=4 * torch.finfo(torch.bfloat16).eps * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_infinite_mask_on_an_integer_coordinate_as_torchvision(device):
    """An infinite mask at a sample on an integer coordinate: the output there is infinite, as
    torchvision's (the three corners of weight 0 do not meet the infinity: 0 x inf would be NaN),
    and its input gradient is infinite at the one corner of weight 1 and reaches none of the others.
    The other gradients as torchvision's too."""
    case = DeformCase(batch=1, in_channels=1, out_channels=1, height=4, width=4, kernel=(1, 1), padding=(0, 0))
    t = case.tensors(torch.float64, device)
    t["input"] = t["input"].abs() + 0.5  # no zero where the infinity is
    t["offset"] = torch.zeros_like(t["offset"])  # every sample on its own pixel
    t["mask"] = torch.ones_like(t["mask"])
    t["mask"][0, 0, 1, 1] = float("inf")
    cotangent = torch.ones(1, 1, 4, 4, dtype=torch.float64, device=device)
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, t, cotangent=cotangent)
    theirs = run_with_grads(torchvision.ops.deform_conv2d, case, t, cotangent=cotangent)
    infinite = torch.zeros(1, 1, 4, 4, dtype=torch.bool, device=device)
    infinite[0, 0, 1, 1] = True
    assert torch.equal(~torch.isfinite(theirs[0]), infinite) and torch.equal(~torch.isfinite(theirs[1]["input"]), infinite)
    assert_matches(ours, theirs, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_input_gradient_skips_the_next_row_within_a_rounding_of_the_sample(device):
    """A sample at y = 1e-20 (x half-way between two pixels) whose output gradient is infinite: the
    input gradient reaches the two pixels of row 0 and, as torchvision's (whose |y - 1| rounds to 1),
    none of row 1, though its weight 1e-20 x 0.5 is not zero."""
    case = DeformCase(batch=1, in_channels=1, out_channels=1, height=3, width=3, kernel=(1, 1), padding=(0, 0))
    t = case.tensors(torch.float64, device)
    t["offset"] = torch.zeros_like(t["offset"])
    t["offset"][0, :, 0, 1] = torch.tensor([1e-20, 0.5])  # output (0, 1) samples (1e-20, 1.5)
    cotangent = torch.ones(1, 1, 3, 3, dtype=torch.float64, device=device)
    cotangent[0, 0, 0, 1] = float("inf")
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, t, cotangent=cotangent)
    theirs = run_with_grads(torchvision.ops.deform_conv2d, case, t, cotangent=cotangent)
    infinite = torch.zeros(1, 1, 3, 3, dtype=torch.bool, device=device)
    infinite[0, 0, 0, 1:] = True
    assert torch.equal(~torch.isfinite(theirs[1]["input"]), infinite)
    assert_matches(ours, theirs, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_gradcheck(device):
    case = DeformCase(batch=2, in_channels=4, out_channels=2, height=4, width=5, groups=2, offset_groups=2,
                      offset_scale=0.7)
    t = case.tensors(torch.float64, device)
    inputs = [t["input"], t["offset"], t["weight"], t["bias"], t["mask"]]
    inputs = [x.requires_grad_(True) for x in inputs]

    def fn(x, off, w, b, m):
        return rcm_fsad_ops.deform_conv2d(x, off, w, b, mask=m, **case.kwargs())

    # The CUDA backward scatters the input gradient with atomics, whose float64 sums may differ in
    # the last bits from one run to the next: gradcheck's reentrancy check needs that much slack.
    nondet_tol = 1e-12 if device == "cuda" else 0.0
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, nondet_tol=nondet_tol)


def test_double_backward_raises(device):
    case = DeformCase(batch=1)
    t = {k: v.requires_grad_(True) for k, v in case.tensors(torch.float64, device).items()}
    out = rcm_fsad_ops.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"],
                                     **case.kwargs())
    (grad_input,) = torch.autograd.grad(out.square().sum(), t["input"], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad_input.sum().backward()


@pytest.mark.parametrize("name", ["input", "offset", "weight", "bias", "mask"])
def test_forward_mode_ad_raises(name, device):
    """A tangent on any argument, through torch.func.jvp or a dual tensor, raises with a message saying so
    (the op itself raises PyTorch's own, test_the_op_refuses_forward_mode_ad_and_functorch_gradients).
    Without one, inside a dual level, the op still runs."""
    case = DeformCase(batch=1)
    t = case.tensors(torch.float64, device)

    def op(value):
        args = dict(t, **{name: value})
        return rcm_fsad_ops.deform_conv2d(args["input"], args["offset"], args["weight"], args["bias"],
                                          mask=args["mask"], **case.kwargs())

    with pytest.raises(NotImplementedError, match="forward-mode AD"):
        torch.func.jvp(op, (t[name],), (torch.ones_like(t[name]),))
    with torch.autograd.forward_ad.dual_level():
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            op(torch.autograd.forward_ad.make_dual(t[name], torch.ones_like(t[name])))
        torch.testing.assert_close(op(t[name]), reference.deform_conv2d(
            t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"], **case.kwargs()))


def test_the_op_refuses_forward_mode_ad_and_functorch_gradients(device):
    """Called through torch.ops, where the wrapper's check does not run, the op's autograd (a C++ kernel)
    raises on a dual tensor rather than silently return no tangent (as torchvision's op does), and
    torch.func's gradient transforms raise as they do for torchvision's op, rather than give a wrong
    gradient."""
    case = DeformCase(batch=1)
    t = case.tensors(torch.float64, device)

    def op(x):
        return torch.ops.rcm_fsad.deform_conv2d(x, t["offset"], t["weight"], t["mask"], t["bias"],
                                                list(case.stride), list(case.padding), list(case.dilation))

    with torch.autograd.forward_ad.dual_level():
        with pytest.raises(RuntimeError, match="jvp"):
            op(torch.autograd.forward_ad.make_dual(t["input"], torch.ones_like(t["input"])))
    with pytest.raises(RuntimeError, match="functorch transforms"):
        torch.func.grad(lambda x: op(x).sum())(t["input"])


def vmapped_args(vmapped: int, offset_batch: int = 2) -> list[torch.Tensor]:
    """Input, offset, weight and mask in float64, each with a leading vmapped dimension of `vmapped`
    indices; one index is a layer of 2 images, 4 channels in, 5 out, 6x6 pixels, 3x3 kernel at padding 1."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(vmapped, 2, 4, 6, 6, generator=g, dtype=torch.float64),
            torch.randn(vmapped, offset_batch, 18, 6, 6, generator=g, dtype=torch.float64),
            torch.randn(vmapped, 5, 4, 3, 3, generator=g, dtype=torch.float64),
            torch.rand(vmapped, 2, 9, 6, 6, generator=g, dtype=torch.float64)]


@pytest.mark.parametrize("in_dims", [(0, 0, None, 0), (None, 1, None, None), (0, 0, 0, 0), (None, None, 0, None)])
def test_vmap_matches_a_loop_over_torchvision(in_dims, device):
    """torch.vmap over any of input, offset, weight and mask (dims as given, None: shared) gives the
    stack of torchvision's per-index results, with gradients through it; vmapped weights aside, the
    batch folds into N: the op runs once, not once per index (from torch 2.5, which takes batching
    rules of custom ops)."""
    vmapped = 4
    args = [(t[0] if dim is None else t.movedim(0, dim)).to(device).requires_grad_(True)
            for t, dim in zip(vmapped_args(vmapped), in_dims)]
    bias = torch.randn(5, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)

    def ours(x, offset, weight, mask):
        return rcm_fsad_ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)

    with torch.profiler.profile() as prof:
        out = torch.vmap(ours, in_dims=in_dims)(*args)
    calls = sum(e.name == "rcm_fsad::deform_conv2d" for e in prof.events())
    if hasattr(torch.library, "register_vmap"):  # the batching rule (torch 2.5 and later) folds the batch
        assert (calls < vmapped) == (in_dims[2] is None), calls
    out.square().sum().backward()
    grads = [a.grad for a in args]
    for a in args:
        a.grad = None
    expected = torch.stack([torchvision.ops.deform_conv2d(
        *(a if dim is None else a.select(dim, i) for a, dim in zip(args[:3], in_dims[:3])), bias, padding=1,
        mask=args[3] if in_dims[3] is None else args[3].select(in_dims[3], i)) for i in range(vmapped)])
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for got, a in zip(grads, args):
        torch.testing.assert_close(got, a.grad, rtol=1e-10, atol=1e-10)


def test_vmap_reports_bad_sizes_as_one_index_has_them():
    """The batching rule folds the vmapped dimension into N (4 indices of 2 images: 8): an offset of 3
    images an index is reported against 2, not 12 against 8."""
    input, offset, weight, mask = vmapped_args(4, offset_batch=3)
    with pytest.raises(RuntimeError, match=r"expected offset of shape \(2, 18, 6, 6\) .* got \[3, 18, 6, 6\]"):
        torch.vmap(lambda x, o, m: rcm_fsad_ops.deform_conv2d(x, o, weight[0], padding=1, mask=m))(input, offset, mask)


@pytest.mark.parametrize("in_dims", [(0, 0, None, 0), (None, None, 0, None)], ids=["folded", "per-index"])
def test_vmap_over_an_empty_dimension_gives_an_empty_output_and_zero_gradients(in_dims):
    """No index to run: an output of 0 x one index's (2, 5, 6, 6), and the shared arguments' gradients
    zero, as a sum over no indices is."""
    args = [(t[0] if dim is None else t[:0]).requires_grad_(True) for t, dim in zip(vmapped_args(1), in_dims)]
    out = torch.vmap(lambda x, o, w, m: rcm_fsad_ops.deform_conv2d(x, o, w, padding=1, mask=m), in_dims=in_dims)(*args)
    assert out.shape == (0, 2, 5, 6, 6)
    out.sum().backward()
    for a in args:
        assert a.grad is not None and a.grad.shape == a.shape and not a.grad.any()


def test_vmap_inside_an_empty_vmap_gives_an_empty_output():
    """The inner vmap folds its 3 indices into N while the outer one has none: an output of (0, 3) x one
    index's (2, 5, 6, 6), though there are no elements to infer a size from."""
    input, offset, weight, mask = vmapped_args(3)
    input, offset, mask = (t.unsqueeze(0)[:0] for t in (input, offset, mask))
    inner = torch.vmap(lambda x, o, m: rcm_fsad_ops.deform_conv2d(x, o, weight[0], padding=1, mask=m))
    assert torch.vmap(inner)(input, offset, mask).shape == (0, 3, 2, 5, 6, 6)


def test_cpu_backward_is_deterministic():
    case = DeformCase(batch=5, in_channels=16, out_channels=8, height=9, width=9, offset_scale=3.0)
    tensors = case.tensors(torch.float32)
    first = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    second = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    assert_matches(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("copies", ["default", "none", "one"])
@pytest.mark.parametrize("groups,offset_groups,in_channels,out_channels",
                         [(1, 2, 8, 6), (2, 2, 16, 6), (2, 3, 6, 6), (4, 1, 8, 8), (4, 2, 8, 8), (8, 2, 8, 8),
                          (2, 2, 2, 2), (4, 2, 8, 16), (2, 2, 2, 6)])
@pytest.mark.parametrize("batch", [1, 3])
def test_cpu_threads_split_the_work_without_changing_it(batch, groups, offset_groups, in_channels, out_channels,
                                                        copies, monkeypatch):
    """The CPU kernels' parallel loops give what one thread gives, to rounding (the tiles' GEMMs and the
    sums of the copies change with the count). Forward: tiles of output pixels, sized for the thread
    count. Backward on 4 threads: images, or bands of an image's rows, a copy of the input gradient each,
    when there are fewer images than threads and the copies fit (RCM_FSAD_CPU_COPY_BYTES: its default, 0,
    or one copy of the weight gradient beyond the first). The weight gradient: with the default budget,
    in that same pass, a copy for each of 4 workers (at batch 3, 3 of the 12 tasks each), as on one
    thread with no copy; else in a second pass, in ranges of rows, a copy each, times blocks of columns:
    runs of conv groups covering whole offset groups (two groups for offset groups that straddle them, all
    four at one offset group, two blocks of two at two, four at eight depthwise groups), or, where the
    copies do not fit, one conv group's runs of kernel points (at one conv group 3 runs with no copy, 9
    runs in 2 ranges with one; at two, 9 runs with no copy). The layers of small groups ((2, 3, 6, 6) on)
    take the group loops instead of GEMMs, in both passes and with every column layout: a block of groups,
    a group's runs of kernel points ((2, 2, 2, 2) without copies), and with several outputs a group
    ((4, 2, 8, 16), (2, 2, 2, 6))."""
    case = DeformCase(batch=batch, in_channels=in_channels, out_channels=out_channels, height=20, width=20,
                      groups=groups, offset_groups=offset_groups, offset_scale=3.0)
    tensors = case.tensors(torch.float64)
    one_copy = tensors["weight"].numel() * tensors["weight"].element_size()
    if copies != "default":
        monkeypatch.setenv("RCM_FSAD_CPU_COPY_BYTES", str(one_copy if copies == "one" else 0))
    with threads(1):
        single = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    with threads(4):
        several = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    assert_matches(several, single, rtol=1e-12, atol=1e-12)
    assert_matches(several, run_with_grads(reference.deform_conv2d, case, tensors), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("copies", ["default", "none"])
@pytest.mark.parametrize("images_a_copy", [1, 3, "default"])
def test_cpu_images_copied_in_runs_give_what_the_input_read_in_place_gives(images_a_copy, copies, two_threads,
                                                                           monkeypatch):
    """The CPU sampling reads a channels_last input in place and copies any other to NHWC, each worker a run
    of images at a time (csrc/cpu/sampling.h's WorkerImages; RCM_FSAD_CPU_IMAGE_COPY_BYTES: one or three
    images' bytes, or its default, which holds all 40 images here). The forward's tiles (180 output pixels on
    2 threads) span 20 images of 3x3 pixels, so runs end inside them, as they do inside the ranges of rows of
    the backward's second pass (RCM_FSAD_CPU_COPY_BYTES 0: no copies of the weight gradient). An NCHW input
    gives what its channels_last copy gives, to float64's rounding, and what the float64 reference gives."""
    case = DeformCase(batch=40, in_channels=4, out_channels=6, height=3, width=3, offset_scale=2.0, seed=7)
    tensors = case.tensors(torch.float64)
    if images_a_copy != "default":
        image_bytes = tensors["input"][0].numel() * tensors["input"].element_size()
        monkeypatch.setenv("RCM_FSAD_CPU_IMAGE_COPY_BYTES", str(images_a_copy * image_bytes))
    if copies == "none":
        monkeypatch.setenv("RCM_FSAD_CPU_COPY_BYTES", "0")
    copied = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    in_place = run_with_grads(rcm_fsad_ops.deform_conv2d, case,
                              dict(tensors, input=tensors["input"].contiguous(memory_format=torch.channels_last)))
    assert_matches(copied, in_place, rtol=1e-12, atol=1e-12)
    assert_matches(copied, run_with_grads(reference.deform_conv2d, case, tensors), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variable", ["RCM_FSAD_CPU_COPY_BYTES", "RCM_FSAD_CPU_IMAGE_COPY_BYTES",
                                      "RCM_FSAD_CPU_WEIGHT_CACHE_BYTES"])
@pytest.mark.parametrize("value", ["-1", "lots", "", " 5", "5 "])
def test_cpu_copy_budget_that_is_not_a_number_of_bytes_is_an_error(variable, value, monkeypatch):
    case = DeformCase()
    tensors = case.tensors(torch.float64)
    monkeypatch.setenv(variable, value)
    with pytest.raises(RuntimeError, match=f"{variable} must be a number of bytes \\(0 or more\\), got '{value}'"):
        run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_weight_gradient_is_rounded_once(dtype):
    """The CUDA backward sums the weight gradient over chunks of output pixels (here five: columns
    512 * 9 wide per conv group, 1024 * 9 in all, make chunks of 7281 of the 8 * 64 * 64 rows) in
    float32 and rounds it to the tensor dtype once. Its error against the float64 gradient of the same
    16-bit operands (the cotangent, and the sampled columns rounded as the backward's im2col rounds
    them) is then at most twice that of rounding that gradient once; rounded after every chunk it would
    be 2.5 to 3 times as large."""
    case = DeformCase(batch=8, in_channels=1024, out_channels=16, groups=2, height=64, width=64, seed=6)
    low = case.tensors(dtype, "cuda")
    weight = low["weight"].clone().requires_grad_(True)
    out = rcm_fsad_ops.deform_conv2d(low["input"], low["offset"], weight, low["bias"], mask=low["mask"],
                                     **case.kwargs())
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    out.backward(cotangent)

    exact_inputs = {k: None if v is None else v.double() for k, v in low.items()}
    columns = reference.sampled_columns(exact_inputs["input"], exact_inputs["offset"], case.kernel, case.groups,
                                        mask=exact_inputs["mask"], **case.kwargs()).to(dtype).double()
    n, groups, _, pixels = columns.shape
    go = cotangent.double().reshape(n, groups, case.out_channels // groups, pixels)
    exact = torch.einsum("ngol,ngkl->gok", go, columns).reshape(weight.shape)
    once_err = (exact.to(dtype).double() - exact).abs().max().item()
    ours_err = (weight.grad.double() - exact).abs().max().item()
    assert ours_err <= 2 * once_err, (ours_err, once_err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_backward_is_deterministic_under_deterministic_algorithms(dtype, monkeypatch):
    """Under torch.use_deterministic_algorithms the CUDA backward takes its atomics-free path: the
    same bits twice, and the right values. A 5x5 kernel on a 6x6 image with offsets of a few pixels
    piles about a hundred samples onto every input pixel and channel, which the atomic scatter would
    sum in a different order from run to run."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what some PyTorch versions ask for cuBLAS
    case = DeformCase(batch=3, in_channels=32, out_channels=8, height=6, width=6, kernel=(5, 5),
                      padding=(2, 2), offset_scale=2.0)
    tensors = case.tensors(dtype, "cuda")

    def two_runs():
        runs = []
        kernels = cuda_kernel_names(lambda: runs.append(run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)))
        runs.append(run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors))
        return runs, kernels

    (first, second), kernels = runs_as(True, two_runs)
    assert any("deform_col2im_input_gather_kernel" in k for k in kernels), kernels
    assert_matches(first, second, rtol=0, atol=0)

    tol = 1e-10 if dtype == torch.float64 else 1e-3
    assert_matches(first, run_with_grads(torchvision.ops.deform_conv2d, case, tensors), rtol=tol, atol=tol)
    exact = run_with_grads(reference.deform_conv2d, case,
                           {k: None if v is None else v.double() for k, v in tensors.items()})
    as_float64 = (first[0].double(), {k: v.double() for k, v in first[1].items()})
    assert_matches(as_float64, exact, rtol=tol, atol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_deterministic_backward_is_the_same_in_any_chunking(dtype, monkeypatch):
    """The deterministic input gradient adds each input element's samples in row order, however the
    backward cuts the rows: RCM_FSAD_CHUNK_ROWS and RCM_FSAD_TABLE_ROWS cut a problem of 189 rows
    (three images of 63) into chunks and sample-table pieces that straddle the images' edges. The
    input, offset and mask gradients are then bitwise those of one chunk; the weight and bias
    gradients, whose GEMMs add chunk after chunk, match the float64 reference. A limit that is not a
    positive number raises, naming its variable."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what some PyTorch versions ask for cuBLAS
    case = DeformCase(batch=3, in_channels=16, out_channels=8, height=7, width=9, offset_scale=2.0, seed=6)
    tensors = case.tensors(dtype, "cuda")

    def chunkings():
        runs = {}
        for chunk, table in ((None, None), ("50", None), ("64", "13"), ("1000", "7")):
            for name, value in (("RCM_FSAD_CHUNK_ROWS", chunk), ("RCM_FSAD_TABLE_ROWS", table)):
                if value is None:
                    monkeypatch.delenv(name, raising=False)
                else:
                    monkeypatch.setenv(name, value)
            runs[(chunk, table)] = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
        monkeypatch.setenv("RCM_FSAD_CHUNK_ROWS", "0")
        with pytest.raises(RuntimeError, match="RCM_FSAD_CHUNK_ROWS must be a positive number of rows, got '0'"):
            run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
        return runs

    runs = runs_as(True, chunkings)
    whole = runs.pop((None, None))
    exact = run_with_grads(reference.deform_conv2d, case,
                           {k: None if v is None else v.double() for k, v in tensors.items()})
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    for limits, (out, grads) in runs.items():
        for name in ("input", "offset", "mask"):
            assert torch.equal(grads[name], whole[1][name]), (limits, name)
        assert_matches((out.double(), {k: v.double() for k, v in grads.items()}), exact, rtol=tol, atol=tol)


def cuda_kernel_names(fn) -> list:
    """The CUDA kernels that fn() launches."""
    # CPU activity too: without it some versions of the profiler miss CUDA kernel events
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("algorithm", ["implicit_gemm", "implicit_gemm_wmma", "implicit_gemm_simt"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_forward_splits_small_problems_over_kernel_points(dtype, algorithm, monkeypatch):
    """An implicit-GEMM forward whose tiles would not fill the GPU for one wave is split over kernel
    points, its partial sums added by deform_conv2d_split_sum_kernel; one with more than a wave of
    tiles (65536 output pixels: 512 tiles of 128 rows, 1024 of 64) is not. Both against the float64
    reference, and each the same bits twice."""
    monkeypatch.setenv("RCM_FSAD_DEFORM_CONV_ALGO", algorithm)
    small = DeformCase(batch=2, in_channels=16, out_channels=16, height=8, width=8)
    large = small.with_(batch=16, height=64, width=64)
    for case, splits in ((small, True), (large, False)):
        tensors = case.tensors(dtype, "cuda")
        outs = []

        def forward():
            outs.append(rcm_fsad_ops.deform_conv2d(tensors["input"], tensors["offset"], tensors["weight"],
                                                   tensors["bias"], mask=tensors["mask"], **case.kwargs()))
        with tf32_set_to(False), torch.no_grad():  # float32 is IEEE, as the tolerance below assumes
            kernels = cuda_kernel_names(forward)
            forward()
        out = outs[0]
        assert any("deform_conv2d_split_sum_kernel" in k for k in kernels) == splits, (case, kernels)
        assert torch.equal(out, outs[1]), "the split forward's partial sums are added in a fixed order"
        exact = reference.deform_conv2d(*(None if tensors[k] is None else tensors[k].double()
                                          for k in ("input", "offset", "weight", "bias")),
                                        mask=tensors["mask"].double(), **case.kwargs())
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(out.double(), exact, rtol=0, atol=tol * exact.abs().max().item())


# Problems for the cp.async and mma.sync tensor-core kernels: every run of channels whole 16-byte
# vectors (C, C/groups and C/offset_groups multiples of 8 16-bit or 4 float elements), blocks 64 and
# 128 wide (a partial one; mma.sync warps 64 and 128 wide, and two along 256 columns, which trade
# sampled rows: 130 output channels leave the second warp all but idle, 256 fill several row tiles),
# offset groups of 24 channels (a partial reduction step), conv groups, strides, offsets far outside,
# no mask, no bias; and conv groups of 24 channels over offset groups of 16, whose runs of channels
# differ from group to group (16 + 8, then 8 + 16), which the mma.sync kernel leaves to the default's
# cp.async kernel.
MIXED_RUNS = "c48_groups2_og3"
ASYNC_CASES = {
    "c16_cout24": DeformCase(in_channels=16, out_channels=24, height=9, width=11),
    "c48_og2_cout70": DeformCase(in_channels=48, out_channels=70, offset_groups=2, height=12, width=12, seed=1),
    "c80_groups2_stride2": DeformCase(in_channels=80, out_channels=34, groups=2, stride=(2, 2), height=11,
                                      width=9, seed=2),
    "c32_far_no_mask_no_bias": DeformCase(in_channels=32, out_channels=130, offset_scale=6.0, use_mask=False,
                                          use_bias=False, seed=3),
    "c32_cout256_rows800": DeformCase(in_channels=32, out_channels=256, height=20, width=20, seed=5),
    MIXED_RUNS: DeformCase(in_channels=48, out_channels=20, groups=2, offset_groups=3, seed=4),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("misaligned", [False, True])
@pytest.mark.parametrize("name", sorted(ASYNC_CASES))
@pytest.mark.parametrize("precision", sorted(LOW_PRECISIONS))
def test_cuda_vector_load_forward(precision, name, misaligned, monkeypatch):
    """The tensor-core forward of tensors whose channel runs are whole 16-byte vectors is the mma.sync
    kernel where the reduction steps are the same in every conv group, the cp.async WMMA kernel
    elsewhere, and that one always with RCM_FSAD_DEFORM_CONV_ALGO=implicit_gemm_wmma;
    RCM_FSAD_DEFORM_CONV_ALGO=implicit_gemm_sync, or an input whose data does not start on a
    16-byte boundary, takes the WMMA kernel with synchronous loads. RCM_FSAD_DEFORM_CONV_ALGO=
    implicit_gemm_wgmma takes the wgmma kernel where the mma.sync kernel would run, on a compute
    capability 9.0 device that loaded the build's sm_90a code (info()["wgmma"]); the default's kernel
    elsewhere. Each is
    judged like test_low_precision_error_is_that_of_its_rounding: its error against the float64 result
    at most twice that of a reference rounding the same operands."""
    dtype, mma_input, _ = LOW_PRECISIONS[precision]
    case = ASYNC_CASES[name]
    low = case.tensors(dtype, "cuda")
    if misaligned:  # the same values, channels_last, one element into their storage
        x = low["input"].permute(0, 2, 3, 1)
        storage = torch.empty(x.numel() + 1, dtype=dtype, device="cuda")
        storage[1:].copy_(x.reshape(-1))
        low["input"] = storage[1:].view(x.shape).permute(0, 3, 1, 2)
        assert low["input"].is_contiguous(memory_format=torch.channels_last)
    exact_inputs = {k: None if v is None else v.double() for k, v in low.items()}
    exact = reference.deform_conv2d(*(exact_inputs[k] for k in ("input", "offset", "weight", "bias")),
                                    mask=exact_inputs["mask"], **case.kwargs())
    same = rounded_operands_output(case, exact_inputs, mma_input, dtype)
    same_err = (same - exact).abs().max().item()
    scale = exact.abs().max().item()
    kernels = ("implicit_gemm_wmma_async_kernel", "implicit_gemm_mma_kernel", "implicit_gemm_wmma_kernel",
               "implicit_gemm_wgmma_kernel")
    sync = "implicit_gemm_wmma_kernel"
    default = (sync if misaligned else "implicit_gemm_wmma_async_kernel" if name == MIXED_RUNS
               else "implicit_gemm_mma_kernel")
    wgmma = default == "implicit_gemm_mma_kernel" and rcm_fsad_ops.info()["wgmma"]
    for algorithm, want in (("implicit_gemm", default),
                            ("implicit_gemm_wgmma", "implicit_gemm_wgmma_kernel" if wgmma else default),
                            ("implicit_gemm_wmma", sync if misaligned else "implicit_gemm_wmma_async_kernel"),
                            ("implicit_gemm_sync", sync)):
        monkeypatch.setenv("RCM_FSAD_DEFORM_CONV_ALGO", algorithm)
        outs = []
        with tf32_set_to(precision == "tf32"), torch.no_grad():
            names = cuda_kernel_names(lambda: outs.append(rcm_fsad_ops.deform_conv2d(
                low["input"], low["offset"], low["weight"], low["bias"], mask=low["mask"], **case.kwargs())))
        for kernel in kernels:
            assert any(kernel in n for n in names) == (kernel == want), (algorithm, names)
        ours_err = (outs[0].double() - exact).abs().max().item()
        assert ours_err <= 2 * same_err + 1e-5 * scale, (algorithm, ours_err, same_err, scale)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_wgmma_switched_off_takes_the_default_path(monkeypatch):
    """RCM_FSAD_DISABLE_WGMMA=1 keeps implicit_gemm_wgmma off the wgmma kernel on any sm_80+ GPU (which
    runs the mma.sync kernel by default): info() says it does not run, and the forward takes the default
    path's kernel, with its bits. A value other than 0, 1 or empty is an error naming the variable,
    from the forward and from info()."""
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("needs an sm_80+ GPU, whose default tensor-core forward is the mma.sync kernel")
    case = ASYNC_CASES["c48_og2_cout70"]
    t = case.tensors(torch.bfloat16, "cuda")

    def forward():
        with torch.no_grad():
            return rcm_fsad_ops.deform_conv2d(t["input"], t["offset"], t["weight"], t["bias"], mask=t["mask"],
                                              **case.kwargs())

    monkeypatch.setenv("RCM_FSAD_DEFORM_CONV_ALGO", "implicit_gemm")
    default = forward()
    monkeypatch.setenv("RCM_FSAD_DEFORM_CONV_ALGO", "implicit_gemm_wgmma")
    monkeypatch.setenv("RCM_FSAD_DISABLE_WGMMA", "1")
    assert not rcm_fsad_ops.info()["wgmma"]
    outs = []
    names = cuda_kernel_names(lambda: outs.append(forward()))
    assert any("implicit_gemm_mma_kernel" in n for n in names) and not any("wgmma" in n for n in names), names
    assert torch.equal(outs[0], default)
    monkeypatch.setenv("RCM_FSAD_DISABLE_WGMMA", "yes")
    for call in (forward, rcm_fsad_ops.info):
        with pytest.raises(RuntimeError, match="RCM_FSAD_DISABLE_WGMMA must be 0 or 1, got 'yes'"):
            call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", sorted(ASYNC_CASES))
def test_cuda_float32_forward_without_tf32_is_as_accurate_as_float32(name, monkeypatch):
    """With TF32 off the default float32 forward is the mma.sync kernel on operands split in two TF32
    parts where that kernel applies (not MIXED_RUNS), the CUDA-core kernel elsewhere and under
    implicit_gemm_simt; implicit_gemm_wgmma takes the wgmma kernel on split operands where the mma.sync
    one would run and info()["wgmma"], the default's kernel elsewhere. Each is judged as flash-attention
    judges a low-precision kernel: its error against the float64 result at most twice that of the
    reference computed in float32 (IEEE, TF32 off), plus the split's own bound, 12 float32 roundoffs of
    the terms' magnitude (sum |weight| x |column|: two TF32 parts hold an operand to 2^-22 of itself, a
    product without small x small is off by at most 3 x 2^-22 of itself). The factor 2 is calibrated
    against float32's own error, not derived. TF32 alone, or a cross term left out, is off by about 2^-12
    of the magnitude."""
    case = ASYNC_CASES[name]
    single = case.tensors(torch.float32, "cuda")
    exact_inputs = {k: None if v is None else v.double() for k, v in single.items()}
    args = ("input", "offset", "weight", "bias")
    exact = reference.deform_conv2d(*(exact_inputs[k] for k in args), mask=exact_inputs["mask"], **case.kwargs())
    groups = case.in_channels // single["weight"].shape[1]
    columns = reference.sampled_columns(exact_inputs["input"], exact_inputs["offset"], case.kernel, groups,
                                        mask=exact_inputs["mask"], **case.kwargs())
    magnitude = reference.columns_times_weight(columns.abs(), exact_inputs["weight"].abs(), None,
                                               exact.shape[-2:]).max().item()
    split_bound = 12 * torch.finfo(torch.float32).eps / 2 * magnitude
    # What the kernel's name contains.
    simt = ("deform_conv2d_implicit_gemm_kernel<",)
    default_kernel = ("implicit_gemm_mma_kernel", "Tf32Split") if name != MIXED_RUNS else simt
    wgmma_runs = name != MIXED_RUNS and rcm_fsad_ops.info()["wgmma"]
    wgmma_kernel = ("implicit_gemm_wgmma_kernel", "Tf32Split") if wgmma_runs else default_kernel
    with tf32_set_to(False), torch.no_grad():
        in_float32 = reference.deform_conv2d(*(single[k] for k in args), mask=single["mask"], **case.kwargs())
        float32_err = (in_float32.double() - exact).abs().max().item()
        for algorithm, want in (("implicit_gemm", default_kernel), ("implicit_gemm_wgmma", wgmma_kernel),
                                ("implicit_gemm_simt", simt)):
            monkeypatch.setenv("RCM_FSAD_DEFORM_CONV_ALGO", algorithm)
            outs = []
            names = cuda_kernel_names(lambda: outs.append(rcm_fsad_ops.deform_conv2d(
                *(single[k] for k in args), mask=single["mask"], **case.kwargs())))
            assert any(all(part in n for part in want) for n in names), (algorithm, names)
            ours_err = (outs[0].double() - exact).abs().max().item()
            assert ours_err <= 2 * float32_err + split_bound, (algorithm, ours_err, float32_err, split_bound)


@pytest.mark.parametrize("name", ["groups2_offset_groups3", "wide_channels", "no_mask", "depthwise",
                                  "groups4_offset_groups2", "depthwise_multiplier", "grouped_multiplier_no_bias"])
def test_cpu_baseline_build_of_the_hot_loops(name, monkeypatch):
    """The CPU loops are compiled twice (baseline ISA and AVX2+FMA, picked at run time): the baseline
    build (on an AVX2+FMA machine, the one it does not pick by itself) must agree with torchvision too."""
    monkeypatch.setenv("RCM_FSAD_CPU_CAPABILITY", "default")
    assert rcm_fsad_ops.info()["cpu_capability"] == "default"
    case = CASES[name]
    tensors = case.tensors(torch.float64)
    ours = run_with_grads(rcm_fsad_ops.deform_conv2d, case, tensors)
    theirs = run_with_grads(torchvision.ops.deform_conv2d, case, tensors)
    assert_matches(ours, theirs, rtol=1e-10, atol=1e-10)
