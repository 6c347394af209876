"""The main job until the model lands: show deform_conv2d agreeing with torchvision."""
from __future__ import annotations

import torch
import torchvision

from rcm_fsad_ops.ops.deform_conv2d import deform_conv2d
from rcm_fsad_ops.reference import output_size


def parity_report(trials: int = 20, seed: int = 0) -> bool:
    """Random configurations, forward and all gradients in float64 against torchvision; prints a
    line per trial and returns whether every difference is below 1e-9."""
    g = torch.Generator().manual_seed(seed)

    def pick(*choices):
        return choices[int(torch.randint(len(choices), (1,), generator=g))]

    worst = 0.0
    print("deform_conv2d vs torchvision.ops.deform_conv2d (float64, CPU): max |difference|")
    for trial in range(trials):
        groups, offset_groups = pick(1, 2), pick(1, 2)
        c_in = 2 * groups * offset_groups * pick(1, 3)
        c_out = groups * pick(1, 4)
        kh, kw = pick(1, 3, 5), pick(1, 3)
        stride, padding, dilation = pick(1, 2), pick(0, 1, 2), pick(1, 2)
        n, h, w = pick(1, 2, 4), pick(5, 9, 12), pick(5, 8, 11)
        out_h, out_w = output_size((h, w), (kh, kw), stride, padding, dilation)
        if out_h <= 0 or out_w <= 0:
            continue
        leaves = [
            torch.randn(n, c_in, h, w, generator=g, dtype=torch.float64),
            torch.randn(n, 2 * offset_groups * kh * kw, out_h, out_w, generator=g, dtype=torch.float64) * 2,
            torch.randn(c_out, c_in // groups, kh, kw, generator=g, dtype=torch.float64),
            torch.randn(c_out, generator=g, dtype=torch.float64),
            torch.rand(n, offset_groups * kh * kw, out_h, out_w, generator=g, dtype=torch.float64),
        ]
        results = []
        for fn in (deform_conv2d, torchvision.ops.deform_conv2d):
            x, off, wt, b, m = (t.clone().requires_grad_(True) for t in leaves)
            out = fn(x, off, wt, b, stride=stride, padding=padding, dilation=dilation, mask=m)
            out.backward(torch.ones_like(out))
            results.append([out.detach(), x.grad, off.grad, wt.grad, b.grad, m.grad])
        diff = max((a - b).abs().max().item() if a.numel() else 0.0 for a, b in zip(*results))
        worst = max(worst, diff)
        print(f"  trial {trial:2d}: N={n} C={c_in}->{c_out} {h}x{w} k={kh}x{kw} s={stride} p={padding} "
              f"d={dilation} groups={groups} offset_groups={offset_groups}: {diff:.2e}")
    ok = worst < 1e-9
    print(f"worst difference {worst:.2e}: {'OK' if ok else 'MISMATCH'}\n")
    return ok
