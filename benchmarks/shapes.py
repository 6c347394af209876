"""Benchmark cases for deform_conv2d and their cost model.

A case is one problem shape (batch, channels, spatial size, kernel geometry) with the dtypes it runs in
on each device. Inputs are deterministic: they are drawn on the CPU from a seeded generator in float32
and then moved/cast, so every implementation (and every device) sees the same numbers.

Cost model (SPEC 4.1):
  forward FLOPs         2 * N * H_out * W_out * C_out * (C_in / groups) * kh * kw
  forward+backward      3x the forward FLOPs (grad input/offset/mask and grad weight are each one
                        GEMM-sized product, like the forward)
  forward min. bytes    one read of input, offset, mask, weight (and bias) + one write of output
  fwd+bwd min. bytes    forward bytes, plus the backward's minimum: one read of grad_output, input,
                        offset, mask, weight and one write of each of their gradients (and bias's)
The byte counts use the element size of the benchmark dtype; they are lower bounds (what an ideal
fused kernel must move), not what any implementation actually moves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from rcm_fsad_ops.reference import output_size

FWD = "fwd"
FWD_BWD = "fwd+bwd"
PASSES = (FWD, FWD_BWD)

SEED = 1234

# Dtype names used in tables and JSON.
DTYPE_NAMES = {
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
}
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class Case:
    """One deform_conv2d problem: C_out = C_in by default, 3x3 kernel, padding 1, stride 1."""

    name: str
    n: int
    c_in: int
    h: int
    w: int
    c_out: Optional[int] = None
    kernel: Tuple[int, int] = (3, 3)
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (1, 1)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    with_mask: bool = True
    with_bias: bool = True
    # dtype names per device type ("cpu", "cuda"); a device missing from the dict does not run the case.
    dtypes: Dict[str, Tuple[str, ...]] = field(default_factory=dict)

    # ---- geometry -------------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return self.c_out if self.c_out is not None else self.c_in

    @property
    def out_hw(self) -> Tuple[int, int]:
        return output_size((self.h, self.w), self.kernel, self.stride, self.padding, self.dilation)

    @property
    def points(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        out_h, out_w = self.out_hw
        kh, kw = self.kernel
        shapes = {
            "input": (self.n, self.c_in, self.h, self.w),
            "offset": (self.n, 2 * self.offset_groups * self.points, out_h, out_w),
            "weight": (self.out_channels, self.c_in // self.groups, kh, kw),
            "output": (self.n, self.out_channels, out_h, out_w),
        }
        if self.with_mask:
            shapes["mask"] = (self.n, self.offset_groups * self.points, out_h, out_w)
        if self.with_bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def describe(self) -> str:
        kh, kw = self.kernel
        return (f"N={self.n} C_in={self.c_in} C_out={self.out_channels} {self.h}x{self.w} k={kh}x{kw} "
                f"s={self.stride[0]} p={self.padding[0]} d={self.dilation[0]} groups={self.groups} "
                f"offset_groups={self.offset_groups} mask={'yes' if self.with_mask else 'no'}")

    # ---- cost model -----------------------------------------------------------------------------
    def forward_flops(self) -> int:
        out_h, out_w = self.out_hw
        kh, kw = self.kernel
        return 2 * self.n * out_h * out_w * self.out_channels * (self.c_in // self.groups) * kh * kw

    def flops(self, pass_name: str) -> int:
        return self.forward_flops() * (3 if pass_name == FWD_BWD else 1)

    def _numel(self, *names: str) -> int:
        shapes = self.shapes()
        total = 0
        for name in names:
            if name in shapes:
                count = 1
                for size in shapes[name]:
                    count *= size
                total += count
        return total

    def min_bytes(self, pass_name: str, element_size: int) -> int:
        operands = self._numel("input", "offset", "mask", "weight", "bias")
        output = self._numel("output")
        forward = operands + output
        if pass_name != FWD_BWD:
            return forward * element_size
        # backward: read grad_output + operands, write one gradient per operand.
        backward = output + 2 * operands
        return (forward + backward) * element_size

    def reference_elements(self) -> int:
        """Size of one sampled-columns intermediate of the eager reference: N * C_in * kh*kw * L."""
        out_h, out_w = self.out_hw
        return self.n * self.c_in * self.points * out_h * out_w

    # ---- inputs ---------------------------------------------------------------------------------
    def make_inputs(self, device: str, dtype: torch.dtype, seed: int = SEED) -> Dict[str, torch.Tensor]:
        """Deterministic inputs (drawn on the CPU in float32, then moved and cast) plus grad_output.

        Offsets are N(0, 1) * 0.5 (sub-pixel to about a pixel of displacement), the mask is the
        sigmoid of N(0, 1), the weight is N(0, 1) / sqrt(fan_in) so outputs stay around unit scale
        (which keeps low-precision comparisons meaningful), the bias is N(0, 1) * 0.1 and grad_output
        is N(0, 1).
        """
        gen = torch.Generator().manual_seed(seed)
        shapes = self.shapes()

        def normal(shape):
            return torch.randn(shape, generator=gen, dtype=torch.float32)

        fan_in = (self.c_in // self.groups) * self.points
        tensors = {
            "input": normal(shapes["input"]),
            "offset": normal(shapes["offset"]) * 0.5,
            "weight": normal(shapes["weight"]) / fan_in ** 0.5,
        }
        if self.with_mask:
            tensors["mask"] = torch.sigmoid(normal(shapes["mask"]))
        if self.with_bias:
            tensors["bias"] = normal(shapes["bias"]) * 0.1
        tensors["grad_output"] = normal(shapes["output"])
        return {key: value.to(device=device, dtype=dtype).contiguous() for key, value in tensors.items()}

    def kwargs(self) -> Dict[str, Tuple[int, int]]:
        """Geometry keyword arguments of deform_conv2d."""
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation}


CPU_DTYPES = ("fp32", "bf16")
CUDA_DTYPES = ("fp32", "fp16", "bf16")

# The three ResNet-18 stage shapes of RCM-FSAD (224x224 input) at batch 8, on both devices.
CASES: List[Case] = [
    Case("n8_c64_56x56", n=8, c_in=64, h=56, w=56, dtypes={"cpu": CPU_DTYPES, "cuda": CUDA_DTYPES}),
    Case("n8_c128_28x28", n=8, c_in=128, h=28, w=28, dtypes={"cpu": CPU_DTYPES, "cuda": CUDA_DTYPES}),
    Case("n8_c256_14x14", n=8, c_in=256, h=14, w=14, dtypes={"cpu": CPU_DTYPES, "cuda": CUDA_DTYPES}),
    # A large GPU-only case: big enough to measure sustained throughput against the roofline.
    Case("n32_c256_56x56", n=32, c_in=256, h=56, w=56, dtypes={"cuda": ("fp32", "bf16")}),
]

# Cases that run only when named (--cases), outside the geometric means and the goals, which stay those
# of the stage shapes above: a depthwise layer (a conv group a channel) of the first stage's shape, one
# of the third stage's with a channel multiplier of 4 (four outputs a group), the first stage's with
# 16 offset groups (4 channels each: the samples, not the channels, are most of the work), and the third
# stage's at batch 1 (one image at a time, as an inference server may run it: few rows for the GEMMs).
EXTRA_CASES: List[Case] = [
    Case("n8_c64_56x56_depthwise", n=8, c_in=64, h=56, w=56, groups=64,
         dtypes={"cpu": CPU_DTYPES, "cuda": CUDA_DTYPES}),
    Case("n8_c256_14x14_depthwise_x4", n=8, c_in=256, c_out=1024, h=14, w=14, groups=256,
         dtypes={"cpu": CPU_DTYPES, "cuda": CUDA_DTYPES}),
    Case("n8_c64_56x56_og16", n=8, c_in=64, h=56, w=56, offset_groups=16,
         dtypes={"cpu": CPU_DTYPES, "cuda": CUDA_DTYPES}),
    Case("n1_c256_14x14", n=1, c_in=256, h=14, w=14, dtypes={"cpu": CPU_DTYPES, "cuda": CUDA_DTYPES}),
]

CASES_BY_NAME = {case.name: case for case in CASES + EXTRA_CASES}


def cases_for(device_type: str, names: Optional[List[str]] = None) -> List[Case]:
    """Cases that run on a device type ("cpu" or "cuda"): CASES, or the named ones of CASES and EXTRA_CASES."""
    if not names:
        return [case for case in CASES if device_type in case.dtypes]
    unknown = [name for name in names if name not in CASES_BY_NAME]
    if unknown:
        raise ValueError(f"unknown benchmark case(s) {unknown}; known: {sorted(CASES_BY_NAME)}")
    return [case for case in CASES + EXTRA_CASES if device_type in case.dtypes and case.name in names]


def dtype_of(name: str) -> torch.dtype:
    return DTYPES_BY_NAME[name]
