"""The op against the package's float64 reference on a torch older than the pinned one, where neither
torchvision nor the test suite's other dependencies need be installed (tools/older_torch_check.py runs
it on the CPU build it makes against torch 2.13 as C++17).

Forward and all five gradients of several layers (groups, offset groups, no mask, stride, dilation,
offsets that leave the image, channels_last), in float64 and float32; gradcheck; opcheck; the layer
with its own offset predictor. Exits non-zero on the first mismatch.
"""
from __future__ import annotations

import sys

import torch

import rcm_fsad_ops
from rcm_fsad_ops import reference
from rcm_fsad_ops.nn import ModulatedDeformConv2dWithOffsetPredictor

# (c_in, c_out, kernel, stride, padding, dilation, groups, offset_groups, mask, bias)
LAYERS = [
    (4, 6, (3, 3), 1, 1, 1, 1, 1, True, True),
    (6, 4, (3, 2), 2, (1, 0), 1, 2, 3, True, False),
    (8, 8, (3, 3), 1, 2, 2, 8, 1, False, True),
    (4, 8, (1, 1), 1, 0, 1, 1, 4, True, True),
]


def tensors(layer, dtype, channels_last=False, n=3, size=(7, 6)):
    """The layer's arguments: the same values in every dtype (drawn in float64)."""
    c_in, c_out, kernel, stride, padding, dilation, groups, offset_groups, mask, bias = layer
    h_out, w_out = reference.output_size(size, kernel, stride, padding, dilation)
    taps = kernel[0] * kernel[1]
    g = torch.Generator().manual_seed(hash(layer) % 2**31)
    args = {
        "input": torch.randn(n, c_in, *size, generator=g, dtype=torch.float64),
        # Up to 4 pixels away: many samples leave the image.
        "offset": 4 * torch.randn(n, 2 * offset_groups * taps, h_out, w_out, generator=g, dtype=torch.float64),
        "weight": torch.randn(c_out, c_in // groups, *kernel, generator=g, dtype=torch.float64),
        "mask": torch.rand(n, offset_groups * taps, h_out, w_out, generator=g, dtype=torch.float64) if mask else None,
        "bias": torch.randn(c_out, generator=g, dtype=torch.float64) if bias else None,
    }
    args = {k: v.to(dtype) if v is not None else None for k, v in args.items()}
    if channels_last:
        args = {k: v.to(memory_format=torch.channels_last) if v is not None and v.dim() == 4 else v
                for k, v in args.items()}
    return args, {"stride": stride, "padding": padding, "dilation": dilation}


def value_and_gradients(fn, args, kwargs):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in args.items() if v is not None}
    out = fn(**{k: leaves.get(k) for k in args}, **kwargs)
    grad_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    out.backward(grad_out)
    return [out.detach()] + [leaves[k].grad for k in sorted(leaves)]


def check(name, ours, expected, rtol, atol):
    for i, (a, b) in enumerate(zip(ours, expected)):
        if not torch.allclose(a, b, rtol=rtol, atol=atol):
            sys.exit(f"{name}: output {i} differs from the float64 reference by {(a - b).abs().max().item():.3g}")


def main() -> None:
    info = rcm_fsad_ops.info()
    print(f"torch {info['torch']}, backends {info['backends']}, {info['cpu_capability']} hot loops, "
          f"float32 GEMMs in {info['cpu_float32_gemms']}")
    for layer in LAYERS:
        args64, kwargs = tensors(layer, torch.float64)
        expected = value_and_gradients(reference.deform_conv2d, args64, kwargs)
        for dtype, channels_last, tol in ((torch.float64, False, 1e-10), (torch.float64, True, 1e-10),
                                          (torch.float32, False, 1e-4)):
            args, _ = tensors(layer, dtype, channels_last)
            ours = value_and_gradients(rcm_fsad_ops.deform_conv2d, args, kwargs)
            check(f"{layer} {dtype} channels_last={channels_last}", [t.double() for t in ours], expected, tol, tol)
    args, kwargs = tensors(LAYERS[1], torch.float64, n=1, size=(4, 3))
    inputs = tuple(args[k].requires_grad_() for k in ("input", "offset", "weight", "mask"))
    torch.autograd.gradcheck(lambda x, o, w, m: rcm_fsad_ops.deform_conv2d(x, o, w, mask=m, **kwargs), inputs)
    args, kwargs = tensors(LAYERS[0], torch.float32)
    torch.library.opcheck(torch.ops.rcm_fsad.deform_conv2d.default,
                          (args["input"], args["offset"], args["weight"], args["mask"], args["bias"],
                           [kwargs["stride"]] * 2, [kwargs["padding"]] * 2, [kwargs["dilation"]] * 2))
    layer = ModulatedDeformConv2dWithOffsetPredictor(4, 6, 3, padding=1)
    out = layer(torch.randn(2, 4, 9, 9))
    out.sum().backward()
    if out.shape != (2, 6, 9, 9) or layer.weight.grad is None:
        sys.exit(f"ModulatedDeformConv2dWithOffsetPredictor: shape {tuple(out.shape)}, weight grad {layer.weight.grad}")
    print(f"{len(LAYERS)} layers x 3 dtypes and layouts, gradcheck, opcheck and the layer: as the reference")


if __name__ == "__main__":
    main()
