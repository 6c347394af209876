"""Random deformable-convolution problems shared by the tests."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import torch

from rcm_fsad_ops.reference import output_size


@dataclass(frozen=True)
class DeformCase:
    batch: int = 2
    in_channels: int = 4
    out_channels: int = 6
    height: int = 7
    width: int = 8
    kernel: tuple = (3, 3)
    stride: tuple = (1, 1)
    padding: tuple = (1, 1)
    dilation: tuple = (1, 1)
    groups: int = 1
    offset_groups: int = 1
    use_mask: bool = True
    use_bias: bool = True
    offset_scale: float = 1.5
    integer_offsets: bool = False
    seed: int = 0
    channels_last: bool = False  # the 4-D tensors' memory format

    def with_(self, **changes) -> "DeformCase":
        return replace(self, **changes)

    @property
    def out_size(self) -> tuple:
        return output_size((self.height, self.width), self.kernel, self.stride, self.padding, self.dilation)

    def tensors(self, dtype=torch.float64, device="cpu") -> dict:
        """input, offset, weight, bias, mask (None where unused), generated from the seed on the CPU; the 4-D
        ones channels_last where channels_last."""
        g = torch.Generator().manual_seed(self.seed)
        kh, kw = self.kernel
        out_h, out_w = self.out_size
        points = kh * kw
        offset_shape = (self.batch, 2 * self.offset_groups * points, out_h, out_w)
        if self.integer_offsets:
            offset = torch.randint(-3, 4, offset_shape, generator=g).double()
        else:
            offset = torch.randn(offset_shape, generator=g, dtype=torch.float64) * self.offset_scale
        values = dict(
            input=torch.randn(self.batch, self.in_channels, self.height, self.width, generator=g, dtype=torch.float64),
            offset=offset,
            weight=torch.randn(self.out_channels, self.in_channels // self.groups, kh, kw, generator=g,
                               dtype=torch.float64) / (points * self.in_channels) ** 0.5,
            bias=torch.randn(self.out_channels, generator=g, dtype=torch.float64) if self.use_bias else None,
            mask=torch.rand(self.batch, self.offset_groups * points, out_h, out_w, generator=g, dtype=torch.float64)
            if self.use_mask else None,
        )
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return {k: None if v is None else
                v.to(device=device, dtype=dtype, memory_format=layout if v.dim() == 4 else torch.preserve_format)
                for k, v in values.items()}

    def kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)


# Kernel sizes (square and not), stride, padding, dilation, groups (depthwise too), offset groups,
# offsets far out of the image, no mask, no bias, batch 1, channel runs off 16-byte boundaries.
CASES = {
    "basic": DeformCase(),
    "k1x1": DeformCase(kernel=(1, 1), padding=(0, 0)),
    "k2x3": DeformCase(kernel=(2, 3), padding=(0, 1)),
    "k5x5_pad2": DeformCase(kernel=(5, 5), padding=(2, 2), height=9, width=9),
    "k3x1_stride2": DeformCase(kernel=(3, 1), stride=(2, 2), padding=(1, 0), height=9, width=7),
    "stride_2x1": DeformCase(stride=(2, 1)),
    "dilation2": DeformCase(dilation=(2, 2), padding=(2, 2)),
    "dilation_1x3": DeformCase(dilation=(1, 3), padding=(0, 3), height=6, width=10),
    "groups2": DeformCase(in_channels=6, out_channels=4, groups=2),
    "offset_groups3": DeformCase(in_channels=6, offset_groups=3),
    "groups2_offset_groups3": DeformCase(in_channels=6, out_channels=8, groups=2, offset_groups=3),
    # conv groups of 8 channels: on the CPU, a GEMM per group (the other grouped layers here take the group loops)
    "groups2_wide": DeformCase(in_channels=16, out_channels=6, groups=2, offset_groups=4, height=6, width=6),
    "groups4_offset_groups2": DeformCase(in_channels=8, out_channels=4, groups=4, offset_groups=2),
    "far_offsets": DeformCase(offset_scale=6.0),
    # 3 rows over 2 with stride 2: one output row whose kernel overhangs the input (torchvision's size)
    "kernel_overhangs_by_less_than_stride": DeformCase(height=2, width=5, stride=(2, 2), padding=(0, 1)),
    "no_mask": DeformCase(use_mask=False),
    "no_bias": DeformCase(use_bias=False),
    # one channel a conv group (the CPU's group loops along contiguous groups), three outputs a group, and
    # two channels and four outputs a group without bias (the loops' outputs reordered, no bias to start from)
    "depthwise": DeformCase(in_channels=8, out_channels=8, groups=8, offset_groups=2),
    "depthwise_multiplier": DeformCase(in_channels=8, out_channels=24, groups=8),
    "grouped_multiplier_no_bias": DeformCase(in_channels=16, out_channels=32, groups=8, offset_groups=2,
                                             use_bias=False, height=6, width=6),
    "no_mask_no_bias_groups": DeformCase(use_mask=False, use_bias=False, in_channels=6, groups=3, offset_groups=2,
                                         out_channels=3),
    "batch1": DeformCase(batch=1, in_channels=3, out_channels=5),
    "integer_offsets": DeformCase(integer_offsets=True),
    "integer_offsets_no_pad": DeformCase(integer_offsets=True, padding=(0, 0), height=6, width=6),
    "wide_channels": DeformCase(in_channels=19, out_channels=3, height=5, width=5, seed=3),
    # offset groups of 10 channels: whole 16-byte vectors per conv group but not per offset group, so
    # runs longer than a vector start off a 16-byte boundary (the CUDA kernels must not load them as vectors)
    "runs_off_vectors": DeformCase(in_channels=40, out_channels=6, offset_groups=4, height=5, width=5, seed=4),
}


def random_case(seed: int) -> DeformCase:
    """A problem drawn from seed: batch, image and kernel sizes, stride, padding, dilation, conv and offset
    groups, output channels (up to 130 a group: several tensor-core column tiles), offsets near, far or on
    integers, with or without mask and bias, channels_last where the seed is odd. Half have conv and offset
    groups of multiples of 8 channels, whole 16-byte vectors in every dtype, which the CUDA vector and
    tensor-core paths need; all are small enough to leave a GPU's grid less than a wave, so that the CUDA
    forward also splits over kernel points."""
    rng = random.Random(seed)
    while True:
        groups, offset_groups = rng.randint(1, 3), rng.randint(1, 4)
        vectors = rng.random() < 0.5
        unit = math.lcm(groups, offset_groups) * (8 if vectors else 1)
        if unit > 96:
            continue
        case = DeformCase(
            batch=rng.randint(1, 3), in_channels=unit * rng.randint(1, min(96 // unit, 3 if vectors else 8)),
            out_channels=groups * (rng.randint(65, 130) if rng.random() < 0.25 else rng.randint(1, 24)),
            height=rng.randint(1, 10), width=rng.randint(1, 10),
            kernel=(rng.randint(1, 4), rng.randint(1, 4)), stride=(rng.randint(1, 3), rng.randint(1, 3)),
            padding=(rng.randint(0, 2), rng.randint(0, 2)), dilation=(rng.randint(1, 2), rng.randint(1, 2)),
            groups=groups, offset_groups=offset_groups, use_mask=rng.random() < 0.75, use_bias=rng.random() < 0.5,
            offset_scale=rng.choice([0.5, 1.5, 4.0]), integer_offsets=rng.random() < 0.2, seed=seed,
            channels_last=seed % 2 == 1)
        if min(case.out_size) >= 1:
            return case
