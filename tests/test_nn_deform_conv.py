import io

import numpy as np  # a dependency of torchvision
import pytest
import torch
import torch.nn.functional as F
import torchvision

from rcm_fsad_ops.nn import (
    ModulatedDeformConv2d,
    ModulatedDeformConv2dWithOffsetPredictor,
    convert_torchvision_deform_conv2d,
)


def test_modulated_deform_conv2d_matches_torchvision(device):
    torch.manual_seed(0)
    layer = ModulatedDeformConv2d(6, 4, (3, 2), stride=(1, 2), padding=(1, 0), groups=2).double().to(device)
    x = torch.randn(2, 6, 8, 9, dtype=torch.float64, device=device)
    out_h, out_w = 8, 4
    offset = torch.randn(2, 2 * 2 * 6, out_h, out_w, dtype=torch.float64, device=device)
    mask = torch.rand(2, 2 * 6, out_h, out_w, dtype=torch.float64, device=device)
    expected = torchvision.ops.deform_conv2d(x, offset, layer.weight, layer.bias, stride=(1, 2), padding=(1, 0),
                                             mask=mask)
    torch.testing.assert_close(layer(x, offset, mask), expected, rtol=1e-10, atol=1e-10)


def test_layer_takes_torchvisions_state_dict(device):
    """A drop-in for torchvision.ops.DeformConv2d: the same constructor, the same parameters (strict
    load_state_dict both ways) and, with them, the same output."""
    torch.manual_seed(0)
    theirs = torchvision.ops.DeformConv2d(6, 4, 3, stride=2, padding=1, dilation=1, groups=2).double().to(device)
    ours = ModulatedDeformConv2d(6, 4, 3, stride=2, padding=1, dilation=1, groups=2).double().to(device)
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64, device=device)
    offset = torch.randn(2, 18, 5, 4, dtype=torch.float64, device=device)
    mask = torch.rand(2, 9, 5, 4, dtype=torch.float64, device=device)
    torch.testing.assert_close(ours(x, offset, mask), theirs(x, offset, mask), rtol=1e-10, atol=1e-10)


def test_offset_predictor_starts_as_half_a_plain_conv(device):
    """Zero-initialised predictor: zero offsets and a mask of sigmoid(0) = 0.5, so the layer is
    0.5 * conv2d(x, weight) + bias (the oracle is F.conv2d)."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dWithOffsetPredictor(8, 5, 3, padding=1, offset_groups=2).double().to(device)
    x = torch.randn(3, 8, 7, 6, dtype=torch.float64, device=device)
    expected = 0.5 * F.conv2d(x, layer.weight, padding=1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    assert layer.offset_predictor.out_channels == 3 * 2 * 9


def test_trained_offset_predictor_matches_torchvision(device):
    """With a non-zero predictor (as after training) and strides: the first 2*G*K predicted channels
    are the offsets, the last G*K the mask logits; the oracle is F.conv2d then torchvision."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dWithOffsetPredictor(8, 5, 3, stride=2, padding=1, offset_groups=2).double().to(device)
    with torch.no_grad():
        layer.offset_predictor.weight.normal_(std=0.3)
        layer.offset_predictor.bias.normal_()
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64, device=device)
    predicted = F.conv2d(x, layer.offset_predictor.weight, layer.offset_predictor.bias, stride=2, padding=1)
    expected = torchvision.ops.deform_conv2d(x, predicted[:, :36], layer.weight, layer.bias, stride=2, padding=1,
                                             mask=predicted[:, 36:].sigmoid())
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_offset_predictor_loads_mmcvs_state_dict(device):
    """mmcv's ModulatedDeformConv2dPack (mmdetection's DCNv2 checkpoints) keeps its predictor as conv_offset:
    such a state_dict, inside a model, loads strictly (the caller's dict unchanged), and the layer then
    computes what mmcv's forward does, written out here with F.conv2d and torchvision: thirds o1, o2 and
    the mask logits, sampled at cat(o1, o2) with the logits' sigmoid as mask."""
    torch.manual_seed(0)
    kwargs = dict(stride=2, padding=2, dilation=2)
    model = torch.nn.Sequential(torch.nn.Identity(),
                                ModulatedDeformConv2dWithOffsetPredictor(6, 4, 3, offset_groups=2, bias=False,
                                                                         **kwargs)).double().to(device)
    mmcv_state = {"1.weight": torch.randn(4, 6, 3, 3, dtype=torch.float64),
                  "1.conv_offset.weight": 0.1 * torch.randn(54, 6, 3, 3, dtype=torch.float64),
                  "1.conv_offset.bias": torch.randn(54, dtype=torch.float64)}
    keys = list(mmcv_state)
    model.load_state_dict(mmcv_state)
    assert list(mmcv_state) == keys
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64, device=device)
    o1, o2, logits = torch.chunk(F.conv2d(x, mmcv_state["1.conv_offset.weight"].to(device),
                                          mmcv_state["1.conv_offset.bias"].to(device), **kwargs), 3, dim=1)
    expected = torchvision.ops.deform_conv2d(x, torch.cat((o1, o2), dim=1), mmcv_state["1.weight"].to(device),
                                             mask=logits.sigmoid(), **kwargs)
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)
    # And its own keys still: the state_dict it saves loads back.
    model.load_state_dict(model.state_dict())


def test_offset_predictor_learns(device):
    """The predictor receives gradients through the offsets and the mask."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dWithOffsetPredictor(4, 4, 3, padding=1).to(device)
    x = torch.randn(2, 4, 6, 6, device=device)
    layer(x).square().sum().backward()
    grad = layer.offset_predictor.weight.grad
    assert grad[: 2 * 9].abs().sum() > 0 and grad[2 * 9 :].abs().sum() > 0


def test_module_rejects_groups_that_do_not_divide():
    with pytest.raises(ValueError, match="groups"):
        ModulatedDeformConv2d(6, 4, 3, groups=4)
    with pytest.raises(ValueError, match="offset_groups"):
        ModulatedDeformConv2dWithOffsetPredictor(6, 6, 3, offset_groups=4)


@pytest.mark.parametrize("groups", [0, -2])
def test_modules_reject_group_counts_that_are_not_positive(groups):
    with pytest.raises(ValueError, match=f"groups must be a positive integer, got {groups}"):
        ModulatedDeformConv2d(6, 4, 3, groups=groups)
    with pytest.raises(ValueError, match=f"offset_groups must be a positive integer, got {groups}"):
        ModulatedDeformConv2dWithOffsetPredictor(6, 6, 3, offset_groups=groups)


BAD_GEOMETRY = [
    (dict(in_channels=0), ValueError, "in_channels must be a positive integer, got 0"),
    (dict(in_channels=-2), ValueError, "in_channels must be a positive integer, got -2"),
    (dict(in_channels=4.0), TypeError, "in_channels must be an integer, got 4.0"),
    (dict(out_channels=-1), ValueError, "out_channels must be a non-negative integer, got -1"),
    (dict(kernel_size=0), ValueError, r"kernel_size values must be at least 1, got 0"),
    (dict(kernel_size=(3, 3, 3)), ValueError, r"expected kernel_size to be an int or a pair of ints, got 3 values"),
    (dict(stride=(1, 0)), ValueError, r"stride values must be at least 1, got \(1, 0\)"),
    (dict(padding=-1), ValueError, "padding values must be at least 0, got -1"),
    (dict(dilation=0), ValueError, "dilation values must be at least 1, got 0"),
    (dict(offset_groups=1.5), TypeError, "offset_groups must be an integer, got 1.5"),
]


@pytest.mark.parametrize("arguments, error, message", BAD_GEOMETRY,
                         ids=[",".join(f"{k}={v}" for k, v in a.items()) for a, _, _ in BAD_GEOMETRY])
def test_modules_reject_a_bad_geometry_when_made(arguments, error, message):
    """Where nn.Conv2d's initialisation would divide by zero (no input channels, an empty kernel) or size a
    tensor negatively, or the op would refuse the layer's first call, the layer refuses to be made, naming
    the argument. Both layers; offset_groups is the predictor's."""
    layers = [ModulatedDeformConv2dWithOffsetPredictor]
    if "offset_groups" not in arguments:
        layers.append(ModulatedDeformConv2d)
    for layer in layers:
        with pytest.raises(error, match=message):
            layer(**{**dict(in_channels=4, out_channels=4, kernel_size=3), **arguments})


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")  # as for nn.Conv2d
def test_modules_take_numpy_integers_and_no_output_channels():
    """Any integer with __index__ counts, as for nn.Conv2d; no output channels give an empty output."""
    layer = ModulatedDeformConv2dWithOffsetPredictor(np.int64(4), np.int64(0), np.int64(3), padding=np.int64(1),
                                                     offset_groups=np.int64(2))
    assert (layer.in_channels, layer.kernel_size, layer.padding, layer.offset_groups) == (4, (3, 3), (1, 1), 2)
    assert all(type(v) is int for v in (layer.in_channels, layer.out_channels, *layer.kernel_size))
    assert layer(torch.randn(2, 4, 5, 5)).shape == (2, 0, 5, 5)


def test_modules_place_their_parameters_by_device_and_dtype():
    """device= and dtype= as for nn.Conv2d, the offset predictor's parameters included; on the meta
    device the forward runs the fake kernel."""
    layer = ModulatedDeformConv2dWithOffsetPredictor(4, 6, 3, padding=1, offset_groups=2, device="meta",
                                                     dtype=torch.float64)
    assert {(p.device.type, p.dtype) for p in layer.parameters()} == {("meta", torch.float64)}
    assert len(list(layer.parameters())) == 4
    out = layer(torch.empty(2, 4, 5, 7, device="meta", dtype=torch.float64))
    assert (out.shape, out.device.type, out.dtype) == ((2, 6, 5, 7), "meta", torch.float64)


@pytest.mark.filterwarnings("ignore:`torch.jit.[a-z]+` is deprecated:FutureWarning")
def test_layers_script_save_and_load():
    """torch.jit.script, save and load: the same outputs and gradients as the eager layers, and the
    same error for a wrong channel count."""
    torch.manual_seed(0)
    given = ModulatedDeformConv2d(6, 4, 3, padding=1, groups=2).double()
    predicting = ModulatedDeformConv2dWithOffsetPredictor(6, 4, 3, padding=1, offset_groups=3).double()
    with torch.no_grad():
        predicting.offset_predictor.weight.normal_(std=0.1)  # away from the zero initialisation
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    offset, mask = torch.randn(2, 18, 5, 7, dtype=torch.float64), torch.rand(2, 9, 5, 7, dtype=torch.float64)
    for layer, args in ((given, (x, offset, mask)), (predicting, (x,))):
        buffer = io.BytesIO()
        torch.jit.save(torch.jit.script(layer), buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        outputs, grads = [], []
        for module in (layer, loaded):
            module.zero_grad()
            out = module(*args)
            out.square().sum().backward()
            outputs.append(out.detach())
            grads.append([p.grad for p in module.parameters()])
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
        for got, want in zip(grads[1], grads[0]):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        with pytest.raises(Exception, match=r"expected input to have in_channels = 6 channels, got 9"):
            loaded(torch.randn(2, 9, 5, 7, dtype=torch.float64), *args[1:])


def test_layer_exports_with_a_dynamic_batch():
    """torch.export (what PyTorch recommends over TorchScript) through the fake kernel: the exported
    program computes what the eager layer does, at another batch size than it was traced with."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dWithOffsetPredictor(4, 6, 3, padding=1, offset_groups=2).double()
    with torch.no_grad():
        layer.offset_predictor.weight.normal_(std=0.1)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(layer, (torch.randn(2, 4, 5, 7, dtype=torch.float64),),
                                   dynamic_shapes={"input": {0: batch}})
    x = torch.randn(3, 4, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(exported.module()(x), layer(x), rtol=0, atol=0)


def test_layer_runs_from_an_aot_inductor_package(tmp_path):
    """AOTInductor (an exported program compiled ahead of time into a .pt2 package, for deployment): the
    compiled code calls the op through the dispatcher, at another batch size than it was traced with."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dWithOffsetPredictor(4, 6, 3, padding=1, offset_groups=2).eval()
    with torch.no_grad():
        layer.offset_predictor.weight.normal_(std=0.5)
    batch = torch.export.Dim("batch", min=1, max=16)
    exported = torch.export.export(layer, (torch.randn(2, 4, 7, 9),), dynamic_shapes={"input": {0: batch}})
    package = torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp_path / "layer.pt2"))
    x = torch.randn(5, 4, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(torch._inductor.aoti_load_package(package)(x), layer(x))


def test_layers_reject_an_input_with_other_than_in_channels():
    """9 channels would otherwise run as 3 groups of 3 with a weight made for 2 groups of 3."""
    layer = ModulatedDeformConv2d(6, 6, 3, groups=2)
    x = torch.randn(1, 9, 5, 5)
    with pytest.raises(ValueError, match=r"expected input to have in_channels = 6 channels, got 9"):
        layer(x, torch.zeros(1, 18, 3, 3))
    predicting = ModulatedDeformConv2dWithOffsetPredictor(6, 6, 3, groups=2)
    with pytest.raises(ValueError, match=r"expected input to have in_channels = 6 channels, got 9"):
        predicting(x)


@pytest.mark.parametrize("value", [None, [[1.0]]], ids=["None", "list"])
def test_layers_name_an_input_that_is_not_a_tensor(value):
    """Where the channel check would fail on a missing method (AttributeError naming none of the arguments)."""
    for layer, args in ((ModulatedDeformConv2d(4, 4, 3), (torch.zeros(1, 18, 3, 3),)),
                        (ModulatedDeformConv2dWithOffsetPredictor(4, 4, 3), ())):
        with pytest.raises(TypeError, match=rf"{type(layer).__name__}: expected input to be a Tensor, got "
                                            rf"{type(value).__name__}"):
            layer(value, *args)


def test_reset_parameters_zeroes_a_trained_offset_predictor(device):
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dWithOffsetPredictor(4, 5, 3, padding=1, offset_groups=2).double().to(device)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, device=device)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        layer(x).square().sum().backward()
        optimizer.step()
    assert layer.offset_predictor.weight.abs().sum() > 0 and layer.offset_predictor.bias.abs().sum() > 0
    trained_weight = layer.weight.detach().clone()

    layer.reset_parameters()
    assert not torch.equal(layer.weight, trained_weight)
    assert torch.count_nonzero(layer.offset_predictor.weight) == 0
    assert torch.count_nonzero(layer.offset_predictor.bias) == 0
    zero_offset = torch.zeros(2, 2 * 2 * 9, 6, 7, dtype=torch.float64, device=device)
    half_mask = torch.full((2, 2 * 9, 6, 7), 0.5, dtype=torch.float64, device=device)
    expected = torchvision.ops.deform_conv2d(x, zero_offset, layer.weight, layer.bias, padding=1, mask=half_mask)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


class _OffsetsAndMask(torch.nn.Module):
    """A torchvision DeformConv2d fed by a conv predicting its offsets and mask: a model to convert."""

    def __init__(self, channels: int, bias: bool):
        super().__init__()
        self.predict = torch.nn.Conv2d(channels, 27, 3, padding=1)
        self.deform = torchvision.ops.DeformConv2d(channels, channels, 3, padding=1, bias=bias)

    def forward(self, x):
        offset, mask = self.predict(x).split([18, 9], dim=1)
        return torch.relu(self.deform(x, offset, torch.sigmoid(mask)))


def test_conversion_swaps_torchvisions_layers_and_keeps_their_parameters(device):
    """convert_torchvision_deform_conv2d swaps every torchvision DeformConv2d of a model, nested ones too,
    for ours holding the same Parameter objects: the model's output and gradients (torchvision's, taken
    before the swap, the oracle), its state_dict keys and training modes stay; other layers are kept."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(_OffsetsAndMask(4, bias=True),
                                torch.nn.ModuleList([_OffsetsAndMask(4, bias=False)])).double().to(device)
    model[1][0].eval()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, device=device)

    def run():
        model.zero_grad()
        out = model[1][0](model[0](x))
        out.square().sum().backward()
        return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    expected_out, expected_grads = run()
    parameters = dict(model.named_parameters())
    keys = list(model.state_dict())
    predictor = model[0].predict
    assert convert_torchvision_deform_conv2d(model) is model
    assert type(model[0].deform) is ModulatedDeformConv2d and type(model[1][0].deform) is ModulatedDeformConv2d
    assert model[0].predict is predictor
    assert all(parameters[name] is p for name, p in model.named_parameters()) and len(parameters) == 7
    assert list(model.state_dict()) == keys
    assert model[0].deform.training and not model[1][0].deform.training
    assert model[1][0].deform.bias is None
    out, grads = run()
    torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-10)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-10, atol=1e-10, msg=name)


def test_conversion_of_a_layer_returns_ours():
    theirs = torchvision.ops.DeformConv2d(6, 4, (3, 2), stride=2, padding=(1, 0), dilation=(2, 1), groups=2)
    ours = convert_torchvision_deform_conv2d(theirs)
    assert type(ours) is ModulatedDeformConv2d and ours.weight is theirs.weight and ours.bias is theirs.bias
    assert (ours.kernel_size, ours.stride, ours.padding, ours.dilation, ours.groups) == \
        (theirs.kernel_size, theirs.stride, theirs.padding, theirs.dilation, theirs.groups)


def test_conversion_keeps_a_shared_layer_shared():
    shared = torchvision.ops.DeformConv2d(4, 4, 3)
    model = convert_torchvision_deform_conv2d(torch.nn.Sequential(shared, torch.nn.Sequential(shared)))
    assert type(model[0]) is ModulatedDeformConv2d and model[1][0] is model[0]


def test_conversion_leaves_subclasses_and_refuses_hooked_layers():
    """A subclass may compute something else in its forward: it stays. A layer with a hook raises, naming
    where it is, instead of silently losing it, and before any layer is swapped."""
    class Subclass(torchvision.ops.DeformConv2d):
        pass

    model = torch.nn.Sequential(Subclass(4, 4, 3))
    assert type(convert_torchvision_deform_conv2d(model)[0]) is Subclass
    hooked = torch.nn.Sequential(torchvision.ops.DeformConv2d(4, 4, 3),
                                 torch.nn.Sequential(torchvision.ops.DeformConv2d(4, 4, 3)))
    hooked[1][0].register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match=r"DeformConv2d at 1\.0 has hooks"):
        convert_torchvision_deform_conv2d(hooked)
    assert type(hooked[0]) is torchvision.ops.DeformConv2d


@pytest.mark.parametrize("addition, what", [
    (lambda m: m.register_buffer("scale", torch.ones(1)), r"parameters, buffers or submodules of its own \(scale\)"),
    (lambda m: m.register_parameter("gain", torch.nn.Parameter(torch.ones(1))),
     r"parameters, buffers or submodules of its own \(gain\)"),
    (lambda m: m.add_module("norm", torch.nn.Identity()), r"parameters, buffers or submodules of its own \(norm\)"),
    (lambda m: m.register_load_state_dict_pre_hook(lambda *args, **kwargs: None), "state_dict hooks"),
    (lambda m: m.register_state_dict_post_hook(lambda *args, **kwargs: None), "state_dict hooks"),
    (lambda m: setattr(m, "tag", "keep me"), r"attributes of its own \(tag\)"),
], ids=["buffer", "parameter", "submodule", "load_state_dict_hook", "state_dict_hook", "attribute"])
def test_conversion_refuses_layers_with_state_it_would_lose(addition, what):
    """A buffer, parameter or submodule of the layer's own would leave the state_dict, a state_dict hook would
    stop running, an attribute would be gone: each raises, naming the layer and what, and nothing is swapped."""
    model = torch.nn.Sequential(torchvision.ops.DeformConv2d(4, 4, 3))
    addition(model[0])
    with pytest.raises(ValueError, match=f"DeformConv2d at 0 has {what}"):
        convert_torchvision_deform_conv2d(model)
    assert type(model[0]) is torchvision.ops.DeformConv2d
    assert type(convert_torchvision_deform_conv2d(torch.nn.Sequential(torchvision.ops.DeformConv2d(4, 4, 3)))[0]) \
        is not torchvision.ops.DeformConv2d
