"""stride, padding and dilation take what torchvision.ops.deform_conv2d takes, and also a 0-d integer
tensor, which torchvision rejects; anything else is rejected with an error naming the argument."""
from __future__ import annotations

import operator

import numpy as np  # a dependency of torchvision
import pytest
import torch
import torchvision

import rcm_fsad_ops
from tests.deform_cases import DeformCase


class Index:
    """An integral type that is neither int nor NumPy: all it has is __index__."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def as_pair(value) -> tuple:
    items = [value, value] if np.ndim(value) == 0 else list(value)
    return tuple(operator.index(v) for v in items)


def problem(name: str, value) -> tuple[dict, dict]:
    """Tensors for a DeformCase whose `name` argument is `value`, and the geometry keyword arguments."""
    geometry = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    geometry[name] = as_pair(value)
    t = DeformCase(height=9, width=10, **geometry).tensors(torch.float64)
    return t, {**geometry, name: value}


ACCEPTED = {
    "numpy int64": np.int64(2),
    "numpy pair": (np.int64(2), np.int32(1)),
    "numpy array": np.array([1, 2]),
    "__index__": Index(2),
    "__index__ pair": (Index(2), 1),
    "tensor pair": (torch.tensor(2), 1),
    "1-d tensor": torch.tensor([2, 1]),
    "list": [1, 2],
    "bool": True,  # torchvision takes it as 1, as Python does
}


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
@pytest.mark.parametrize("value", list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_integral_values_are_taken_like_torchvision(name, value):
    t, geometry = problem(name, value)
    args = dict(input=t["input"], offset=t["offset"], weight=t["weight"], bias=t["bias"], mask=t["mask"])
    expected = torchvision.ops.deform_conv2d(**args, **geometry)
    torch.testing.assert_close(rcm_fsad_ops.deform_conv2d(**args, **geometry), expected, rtol=1e-10, atol=1e-10)


def test_a_0d_integer_tensor_counts_as_its_value():
    """Where torchvision fails ("iteration over a 0-d tensor"), ours takes the tensor's value, as
    torch.nn.functional.conv2d does; the oracle is torchvision given that value as an int."""
    t, geometry = problem("stride", 2)
    args = dict(input=t["input"], offset=t["offset"], weight=t["weight"], bias=t["bias"], mask=t["mask"])
    expected = torchvision.ops.deform_conv2d(**args, **geometry)
    got = rcm_fsad_ops.deform_conv2d(**args, **{**geometry, "stride": torch.tensor(2)})
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


NOT_INTEGRAL = {
    "float": 1.5,
    "integral float": 2.0,
    "None": None,
    "str": "2",
    "float in pair": (1, 2.0),
    "None in pair": (None, 1),
    "float tensor": torch.tensor(2.0),
    "numpy float": np.float64(2.0),
}
WRONG_COUNT = {"one": (1,), "three": (1, 2, 3), "empty": [], "numpy three": np.array([1, 2, 3])}


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
@pytest.mark.parametrize("value", list(NOT_INTEGRAL.values()), ids=list(NOT_INTEGRAL))
def test_values_that_are_not_integers_are_rejected_by_name(name, value):
    t, geometry = problem(name, 1)
    with pytest.raises(TypeError, match=rf"expected {name} to be an int or a pair of ints, got "):
        rcm_fsad_ops.deform_conv2d(t["input"], t["offset"], t["weight"], **{**geometry, name: value})


@pytest.mark.parametrize("name", ["stride", "padding", "dilation"])
@pytest.mark.parametrize("value", list(WRONG_COUNT.values()), ids=list(WRONG_COUNT))
def test_other_than_two_values_are_rejected_by_name(name, value):
    t, geometry = problem(name, 1)
    message = rf"expected {name} to be an int or a pair of ints, got {len(value)} values"
    with pytest.raises(ValueError, match=message):
        rcm_fsad_ops.deform_conv2d(t["input"], t["offset"], t["weight"], **{**geometry, name: value})
