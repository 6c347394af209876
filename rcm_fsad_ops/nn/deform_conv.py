"""Deformable convolution layers."""
from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.types import Device

from rcm_fsad_ops.ops.deform_conv2d import _pair, deform_conv2d

if TYPE_CHECKING:
    from torchvision.ops import DeformConv2d

IntPair = Union[int, Tuple[int, int]]


def _count(value: int, name: str, minimum: int) -> int:
    """value as an int of at least minimum (0 or 1), else an error naming it: checked when the layer is
    made, where a zero would divide by zero in the initialisation and a negative count size a tensor."""
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if count < minimum:
        raise ValueError(f"{name} must be a {'positive' if minimum else 'non-negative'} integer, got {count}")
    return count


def _geometry(value: IntPair, name: str, minimum: int) -> Tuple[int, int]:
    """A kernel size, stride, padding or dilation as the pair the op takes, both at least minimum."""
    pair = _pair(value, name)
    if min(pair) < minimum:
        raise ValueError(f"{name} values must be at least {minimum}, got {value!r}")
    return pair[0], pair[1]


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer whose offsets and mask are given by the caller.

    forward(input (N, C_in, H, W), offset (N, 2*G*kh*kw, H_out, W_out),
            mask (N, G*kh*kw, H_out, W_out) or None) -> (N, C_out, H_out, W_out)

    device and dtype place the parameters, as for nn.Conv2d. Scriptable with torch.jit.script.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        device: Device = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        # The op takes no input without channels; a layer of no output channels gives an empty output.
        in_channels = _count(in_channels, "in_channels", 1)
        out_channels = _count(out_channels, "out_channels", 0)
        groups = _count(groups, "groups", 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"groups ({groups}) must divide in_channels ({in_channels}) and out_channels ({out_channels})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _geometry(kernel_size, "kernel_size", 1)
        self.stride = _geometry(stride, "stride", 1)
        self.padding = _geometry(padding, "padding", 0)
        self.dilation = _geometry(dilation, "dilation", 1)
        self.groups = groups
        self._name = type(self).__name__  # for error messages, also under TorchScript
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The initialisation of nn.Conv2d, so a DCN layer can replace a conv layer.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.weight.shape[2] * self.weight.shape[3]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def _check_input_channels(self, input: Tensor) -> None:
        # The op infers groups from the input's channels, so a wrong channel count would silently
        # regroup the weight instead of failing. Other ranks are left to the op's own check.
        if not isinstance(input, Tensor):
            raise TypeError(f"{self._name}: expected input to be a Tensor, got {type(input).__name__}")
        if input.dim() == 4 and input.shape[1] != self.in_channels:
            raise ValueError(
                f"{self._name}: expected input to have in_channels = {self.in_channels} channels, "
                f"got {input.shape[1]} (input of shape {list(input.shape)})"
            )

    def _convolve(self, input: Tensor, offset: Tensor, mask: Optional[Tensor]) -> Tensor:
        return deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask)

    def forward(self, input: Tensor, offset: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        self._check_input_channels(input)
        return self._convolve(input, offset, mask)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}")


class ModulatedDeformConv2dWithOffsetPredictor(ModulatedDeformConv2d):
    """DCNv2 layer that predicts its own offsets and mask from its input (mmcv's "pack" form).

    A plain conv with the layer's kernel size, stride, padding and dilation predicts 3*G*kh*kw
    channels: the first 2*G*kh*kw are the offsets, the rest pass through a sigmoid to become the
    mask. It is zero-initialised, so a new layer samples the regular grid with a mask of 0.5.
    device and dtype place the parameters of both, as for nn.Conv2d.

    load_state_dict also takes mmcv's ModulatedDeformConv2dPack's (as in mmdetection's DCNv2
    checkpoints): its predictor, conv_offset, lays out its channels as this one does (mmcv splits them
    into thirds o1, o2 and the mask logits, and samples at cat(o1, o2)), so its keys load as
    offset_predictor's.

    forward(input (N, C_in, H, W)) -> (N, C_out, H_out, W_out)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = True,
        *,
        device: Device = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         device=device, dtype=dtype)
        offset_groups = _count(offset_groups, "offset_groups", 1)
        if self.in_channels % offset_groups:
            raise ValueError(f"offset_groups ({offset_groups}) must divide in_channels ({self.in_channels})")
        self.offset_groups = offset_groups
        points = self.kernel_size[0] * self.kernel_size[1]
        self.offset_channels = 2 * offset_groups * points
        self.offset_predictor = nn.Conv2d(
            self.in_channels, 3 * offset_groups * points, self.kernel_size, self.stride, self.padding,
            self.dilation, bias=True, device=device, dtype=dtype,
        )
        self._reset_offset_predictor()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        # The parent's __init__ calls this before the predictor exists; __init__ then zeroes it.
        if hasattr(self, "offset_predictor"):
            self._reset_offset_predictor()

    def _reset_offset_predictor(self) -> None:
        nn.init.zeros_(self.offset_predictor.weight)
        assert self.offset_predictor.bias is not None  # made with bias=True
        nn.init.zeros_(self.offset_predictor.bias)

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, local_metadata: Dict[str, Any],
                              strict: bool, missing_keys: List[str], unexpected_keys: List[str],
                              error_msgs: List[str]) -> None:
        # mmcv's keys renamed here, before nn.Module hands the predictor its share of state_dict (a copy
        # that load_state_dict made: the caller's dict is left alone).
        for name in ("weight", "bias"):
            mmcv_key, key = f"{prefix}conv_offset.{name}", f"{prefix}offset_predictor.{name}"
            if mmcv_key in state_dict and key not in state_dict:
                state_dict[key] = state_dict.pop(mmcv_key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, input: Tensor) -> Tensor:  # type: ignore[override]
        # Checked before the predictor runs, so that both layers report a wrong input the same way.
        self._check_input_channels(input)
        predicted = self.offset_predictor(input)
        offset = predicted[:, : self.offset_channels]
        mask = torch.sigmoid(predicted[:, self.offset_channels :])
        return self._convolve(input, offset, mask)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, offset_groups={self.offset_groups}"


def convert_torchvision_deform_conv2d(module: nn.Module) -> nn.Module:
    """Swaps every torchvision.ops.DeformConv2d in module (module itself included) for a
    ModulatedDeformConv2d that holds the very same Parameter objects, as nn.SyncBatchNorm.convert_sync_batchnorm
    does for batch norms: state_dict keys, devices, dtypes, memory formats, training modes and optimisers
    built on the model before stay as they were, and the outputs are torchvision's. A layer that appears
    at several places becomes one layer of ours at all of them.

    Returns module, changed in place, or the new layer when module is itself such a layer. Only layers of
    exactly that type are swapped (a subclass may compute something else in its forward). A layer with
    anything the new layer would silently lose (hooks, state_dict hooks, parametrizations, parameters,
    buffers or submodules registered beyond torchvision's, attributes set on it) raises a ValueError naming
    it and what, before anything is swapped.
    """
    try:
        from torchvision.ops import DeformConv2d
    except ImportError:  # then module cannot hold one
        return module
    theirs = [(name, m) for name, m in module.named_modules() if type(m) is DeformConv2d]
    own_attributes = set(vars(DeformConv2d(1, 1, 1))) if theirs else set()
    for name, m in theirs:
        lost = _what_conversion_would_lose(m, own_attributes)
        if lost:
            raise ValueError(f"convert_torchvision_deform_conv2d: the DeformConv2d at {name or 'the top level'} "
                             f"has {', '.join(lost)}, which the new layer would not have; add them after "
                             f"converting")
    ours = {id(m): _from_torchvision(m) for _, m in theirs}

    def swap(parent: nn.Module) -> None:
        for child_name, child in parent.named_children():
            if id(child) in ours:
                setattr(parent, child_name, ours[id(child)])
            else:
                swap(child)

    if id(module) in ours:
        return ours[id(module)]
    swap(module)
    return module


def _what_conversion_would_lose(layer: nn.Module, own_attributes: set) -> list:
    """What `layer` holds beyond a freshly made layer of its type, whose attributes' names are own_attributes:
    what _from_torchvision would not carry over."""
    lost = []
    if any((layer._forward_hooks, layer._forward_pre_hooks, layer._backward_hooks, layer._backward_pre_hooks)):
        lost.append("hooks")
    if any((layer._state_dict_hooks, layer._state_dict_pre_hooks, layer._load_state_dict_pre_hooks,
            layer._load_state_dict_post_hooks)):
        lost.append("state_dict hooks")
    if parametrize.is_parametrized(layer):
        lost.append("parametrizations")
    extra = sorted(set(layer._parameters) - {"weight", "bias"}) + sorted(layer._buffers) + sorted(layer._modules)
    if extra:
        lost.append(f"parameters, buffers or submodules of its own ({', '.join(extra)})")
    attributes = sorted(set(vars(layer)) - own_attributes)
    if attributes:
        lost.append(f"attributes of its own ({', '.join(attributes)})")
    return lost


def _from_torchvision(layer: DeformConv2d) -> ModulatedDeformConv2d:
    # Made on the meta device: its own parameters are replaced by the torchvision layer's right away.
    ours = ModulatedDeformConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                 layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                                 device="meta", dtype=layer.weight.dtype)
    ours.weight = layer.weight
    ours.bias = layer.bias
    return ours.train(layer.training)
