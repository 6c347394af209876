"""The implementations a benchmark run compares (benchmarks.runner), and how each is called.

On CUDA, ``ours`` is the default forward path (in tensor-core types the mma.sync kernel, its sampled
operand in registers, where it applies; in fp32 with TF32 off the same on split operands), and
``ours[implicit_gemm_wgmma]`` (Hopper's wgmma, on sm_90 with the build's sm_90a code; fp32 split as ours),
``ours[implicit_gemm_wmma]`` (the WMMA kernel with cp.async copies), ``ours[implicit_gemm_sync]`` (the
WMMA kernel without them), ``ours[implicit_gemm_simt]`` and ``ours[columns]`` (forward only) are the
other five, so the tensor-core, CUDA-core and columns paths sit side by side, with ``ours[autotune]``
(forward only), the fastest of them as timed on its first call; ``ours[deterministic]`` times
forward+backward under ``torch.use_deterministic_algorithms(True)``.

On every device ``ours[channels_last]`` runs what ``ours`` runs on channels_last input, offset, mask,
weight and grad_output (what a model converted by ``model.to(memory_format=torch.channels_last)`` hands
it), where the op converts no layout: on contiguous NCHW tensors it converts the input and grad_output to
NHWC and the output and input gradient back, reads offset and mask across their planes, and reorders the
weight into its GEMMs' layout and the weight gradient back.

``dense conv2d`` is ``torch.nn.functional.conv2d`` with the same input, weight, bias and hyper-parameters,
no offsets and no mask (the backend's own convolution: cuDNN, or oneDNN/MKL on the CPU): the same
FLOPs without the sampling, so ours' time over its time is what the deformation costs. It is not a
deformable convolution, so it has no parity check and stays out of the geometric means and goals.

``onnxruntime`` (CPU, where onnxruntime and onnxscript are installed) is onnxruntime's DeformConv kernel
running the op as ``torch.onnx.export`` exports it (rcm_fsad_ops.onnx), with the weight and bias as
initializers, on as many intra-op threads as torch has, its other session options the defaults: what a
model exported to ONNX runs on. It is an inference engine, so it has forward rows only, and none in
bfloat16, which its CPU kernel lacks; ours' rows report their speed-up over it.

torchvision's deform_conv2d may lack a kernel for a dtype (bf16, say). Then it runs the way a user
would get it: under ``torch.autocast`` in that dtype, where torchvision upcasts to fp32 and casts the
result back (CUDA; the row's note says "autocast->fp32"), or, where autocast has no policy for it either
(the CPU), on the arguments cast to fp32 by hand, its results cast back ("cast->fp32").
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

from benchmarks.shapes import FWD, FWD_BWD, PASSES, Case

OURS = "ours"
OURS_WGMMA = "ours[implicit_gemm_wgmma]"
OURS_WMMA = "ours[implicit_gemm_wmma]"
OURS_SYNC = "ours[implicit_gemm_sync]"
OURS_SIMT = "ours[implicit_gemm_simt]"
OURS_COLUMNS = "ours[columns]"
OURS_AUTOTUNE = "ours[autotune]"
OURS_CHANNELS_LAST = "ours[channels_last]"
OURS_DETERMINISTIC = "ours[deterministic]"
TORCHVISION = "torchvision"
ONNXRUNTIME = "onnxruntime"
REFERENCE = "reference"
COMPILED = "reference+compile"
DENSE = "dense conv2d"
IMPL_ORDER = (OURS, OURS_CHANNELS_LAST, OURS_WGMMA, OURS_WMMA, OURS_SYNC, OURS_SIMT, OURS_COLUMNS, OURS_AUTOTUNE,
              OURS_DETERMINISTIC, TORCHVISION, ONNXRUNTIME, REFERENCE, COMPILED, DENSE)
ALGORITHM_ENV = "RCM_FSAD_DEFORM_CONV_ALGO"


class Variant(NamedTuple):
    """Another path of ours: the forward algorithm (ALGORITHM_ENV, read by the CUDA forward at each
    call; None: the default), torch.use_deterministic_algorithms (and its warn_only), the passes it
    changes, and whether it takes its tensors channels_last (_in_layout)."""
    algorithm: Optional[str]
    deterministic: bool
    passes: Tuple[str, ...]
    warn_only: bool = False
    channels_last: bool = False


# On CUDA these run beside the default path: the other forward algorithms (forward only: the
# backward is the same for all) and the deterministic backward (forward+backward).
CUDA_VARIANTS = {
    OURS_CHANNELS_LAST: Variant(None, False, PASSES, channels_last=True),  # with the caller's settings: variant_of
    OURS_WGMMA: Variant("implicit_gemm_wgmma", False, (FWD,)),
    OURS_WMMA: Variant("implicit_gemm_wmma", False, (FWD,)),
    OURS_SYNC: Variant("implicit_gemm_sync", False, (FWD,)),
    OURS_SIMT: Variant("implicit_gemm_simt", False, (FWD,)),
    OURS_COLUMNS: Variant("columns", False, (FWD,)),
    OURS_AUTOTUNE: Variant("autotune", False, (FWD,)),
    OURS_DETERMINISTIC: Variant(None, True, (FWD_BWD,)),
}
# The variants that differ from ``ours`` only where it takes tensor cores. In fp64 they run the CUDA-core
# kernel that ``ours`` runs. In fp32 with TF32 off ``ours`` splits its operands over TF32 tensor cores and
# implicit_gemm_simt is the CUDA-core kernel, while the WMMA variants, which do not split, run that same
# CUDA-core kernel. Those are not timed again under another name. (The wgmma one splits as ours does.)
TENSOR_CORE_VARIANTS = (OURS_WGMMA, OURS_WMMA, OURS_SYNC, OURS_SIMT)


def variant_of(impl: str, default: Variant) -> Variant:
    """What impl runs under: a CUDA variant's own settings, but ours[channels_last] the caller's (``default``,
    as ours) on channels_last tensors, so that it differs from ours in the layout alone; anything else the
    caller's."""
    if impl == OURS_CHANNELS_LAST:
        return default._replace(channels_last=True)
    if impl == ONNXRUNTIME:  # inference only
        return default._replace(passes=(FWD,))
    return CUDA_VARIANTS.get(impl, default)


def variant_applies(impl: str, dtype_name: str, tf32_matmul: bool) -> bool:
    """Whether timing ``impl`` in this dtype measures a kernel of its own (see TENSOR_CORE_VARIANTS)."""
    if impl not in TENSOR_CORE_VARIANTS or dtype_name in ("fp16", "bf16"):
        return True
    return dtype_name == "fp32" and (tf32_matmul or impl in (OURS_WGMMA, OURS_SIMT))


def variant_skip_reason(impl: str, dtype_name: str) -> str:
    """Why ``impl`` is not timed in this dtype (variant_applies is false): the kernel it would time."""
    if dtype_name == "fp32":
        return f"no WMMA kernel in fp32 without TF32: the CUDA-core kernel of {OURS_SIMT}"
    return "no tensor cores in this dtype: the CUDA-core kernel of ours"


def ours() -> Callable:
    """rcm_fsad_ops.deform_conv2d (every ``ours`` row: its variants differ in settings and layouts)."""
    import rcm_fsad_ops

    return rcm_fsad_ops.deform_conv2d


def wgmma_runs() -> bool:
    """Whether ours[implicit_gemm_wgmma] runs the wgmma kernel here (else it would time ours' default path
    under another name)."""
    import rcm_fsad_ops

    return rcm_fsad_ops.info()["wgmma"]


def _torchvision(mode: str) -> Callable:
    import torchvision.ops

    native = torchvision.ops.deform_conv2d
    if mode == "native":
        return native
    if mode == "cast":
        def via_float32(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
            def cast(t):
                return None if t is None else t.float()

            return native(cast(input), cast(offset), cast(weight), bias=cast(bias), stride=stride, padding=padding,
                          dilation=dilation, mask=cast(mask)).to(input.dtype)

        return via_float32

    def via_autocast(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
        with torch.autocast(device_type=input.device.type, dtype=input.dtype):
            return native(input, offset, weight, bias=bias, stride=stride, padding=padding,
                          dilation=dilation, mask=mask)

    return via_autocast


def compared_impls(device_type: str) -> List[str]:
    """The implementations every run compares: ours and ours[channels_last], on CUDA also its other paths
    (CUDA_VARIANTS), and torchvision. Returns their names in table order."""
    variants = list(CUDA_VARIANTS) if device_type == "cuda" else [OURS_CHANNELS_LAST]
    return [OURS] + variants + [TORCHVISION]


def current_variant() -> Variant:
    """The forward algorithm and determinism in force now, with every pass: what ``ours`` (and every
    implementation that is not a CUDA variant) runs under, and what is restored after the variants."""
    return Variant(os.environ.get(ALGORITHM_ENV), torch.are_deterministic_algorithms_enabled(), PASSES,
                   torch.is_deterministic_algorithms_warn_only_enabled())


def select(variant: Variant) -> None:
    """The variant's CUDA forward algorithm (None: the default) and torch's determinism for the calls
    that follow."""
    if variant.algorithm is None:
        os.environ.pop(ALGORITHM_ENV, None)
    else:
        os.environ[ALGORITHM_ENV] = variant.algorithm
    if variant.deterministic:  # what PyTorch versions that check cuBLAS's determinism ask for
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(variant.deterministic, warn_only=variant.warn_only)


def error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def pick_torchvision(tensors: Dict[str, torch.Tensor], case: "Case") -> Tuple[Callable, str, Dict[str, torch.Tensor]]:
    """torchvision's deform_conv2d in the inputs' dtype, or under autocast when it has no kernel for it, or
    on the inputs cast to float32 when autocast has no policy for it either.

    Returns (fn, note, results of one forward+backward); raises when neither way runs.
    """
    errors = []
    for mode, note in (("native", ""), ("autocast", "autocast->fp32"), ("cast", "cast->fp32")):
        try:
            fn = _torchvision(mode)
            return fn, note, evaluate(fn, tensors, case)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{mode}: {error_text(exc)}")
    raise RuntimeError("torchvision.ops.deform_conv2d failed (" + "; ".join(errors) + ")")


def reference() -> Callable:
    """The eager pure-PyTorch reference (rcm_fsad_ops.reference)."""
    from rcm_fsad_ops.reference import deform_conv2d

    return deform_conv2d


def dense_conv2d() -> Callable:
    """conv2d with deform_conv2d's signature: the offsets and the mask are ignored."""

    def dense(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
        return torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation,
                                          groups=input.shape[1] // weight.shape[1])

    return dense


# The dtypes of onnxruntime's CPU DeformConv kernel (not bfloat16).
ONNXRUNTIME_DTYPES = ("fp16", "fp32", "fp64")


def onnxruntime_deform_conv(tensors: Dict[str, torch.Tensor], case: Case) -> Callable:
    """onnxruntime's DeformConv on the CPU, forward only: the op exported by torch.onnx.export with this
    case's weight and bias as the graph's initializers (as in an exported model), run on as many threads
    as torch's. Returns deform_conv2d's signature; the weight, bias and hyper-parameters it is given are
    those it was exported with."""
    import onnxruntime

    from rcm_fsad_ops.nn import ModulatedDeformConv2d

    weight = tensors["weight"]
    layer = ModulatedDeformConv2d(case.c_in, case.out_channels, case.kernel, groups=case.groups,
                                  bias="bias" in tensors, dtype=weight.dtype, **case.kwargs()).eval()
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is not None:
            layer.bias.copy_(tensors["bias"])
    names = [name for name in ("input", "offset", "mask") if name in tensors]
    program = torch.onnx.export(layer, tuple(tensors[name].detach() for name in names), dynamo=True, verbose=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    graph_inputs = [arg.name for arg in session.get_inputs()]

    def run(input, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
        arrays = [t.numpy() for t in (input, offset, mask) if t is not None]
        return torch.from_numpy(session.run(None, dict(zip(graph_inputs, arrays)))[0])

    return run


def compiled_reference() -> Callable:
    import torch._dynamo

    torch._dynamo.reset()  # a fresh cache per case and dtype: no recompile limits, no stale graphs
    return torch.compile(reference(), dynamic=False)


LEAF_NAMES = ("input", "offset", "weight", "mask", "bias")


def leaf_tensors(tensors: Dict[str, torch.Tensor], requires_grad: bool) -> Dict[str, torch.Tensor]:
    """Detached copies of the op's arguments among ``tensors`` (LEAF_NAMES), requiring grad if asked."""
    leaves = {}
    for name in LEAF_NAMES:
        if name in tensors:
            leaf = tensors[name].detach()
            leaves[name] = leaf.requires_grad_(True) if requires_grad else leaf
    return leaves


def in_layout(tensors: Dict[str, torch.Tensor], variant: Variant) -> Dict[str, torch.Tensor]:
    """The tensors a variant runs on: channels_last copies of the 4-D ones (input, offset, mask, weight,
    grad_output: what a channels_last model passes) where it asks for them."""
    if not variant.channels_last:
        return tensors
    four_d = ("input", "offset", "mask", "weight", "grad_output")
    return {name: t.contiguous(memory_format=torch.channels_last) if name in four_d else t
            for name, t in tensors.items()}


def call(fn: Callable, leaves: Dict[str, torch.Tensor], case: Case) -> torch.Tensor:
    """fn, with deform_conv2d's signature, on the arguments and the case's hyper-parameters."""
    return fn(leaves["input"], leaves["offset"], leaves["weight"], bias=leaves.get("bias"),
              mask=leaves.get("mask"), **case.kwargs())


def evaluate(fn: Callable, tensors: Dict[str, torch.Tensor], case: Case) -> Dict[str, torch.Tensor]:
    """Output and every gradient of one forward+backward."""
    leaves = leaf_tensors(tensors, requires_grad=True)
    out = call(fn, leaves, case)
    out.backward(tensors["grad_output"])
    results = {"output": out.detach()}
    for name, leaf in leaves.items():
        results[f"grad_{name}"] = leaf.grad
    return results
