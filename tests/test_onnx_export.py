"""ONNX export (rcm_fsad_ops.onnx): the op becomes one DeformConv node, and onnxruntime runs the exported
graph as torchvision computes the layer. Two ways in: a module through torch.onnx.export alone (the function
emits the node during an export), and an ExportedProgram holding the op through rcm_fsad_ops.onnx.export
(its translation table).

The dependencies (onnxscript, onnxruntime) are in requirements.txt; where they are missing (the GPU
machine, which has no network) the module is skipped."""
import sys

import pytest
import torch
import torchvision

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import rcm_fsad_ops  # noqa: E402
import rcm_fsad_ops.onnx  # noqa: E402
from rcm_fsad_ops.nn import ModulatedDeformConv2d, ModulatedDeformConv2dWithOffsetPredictor  # noqa: E402
from rcm_fsad_ops.reference import output_size  # noqa: E402

# 4 -> 6 channels in 2 groups, offset groups 2, a 3x2 kernel with stride, padding and dilation all
# different along the two axes.
LAYER = dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1),
             groups=2)
OFFSET_GROUPS = 2
HEIGHT, WIDTH = 9, 8


def _layer(dtype: torch.dtype, bias: bool) -> ModulatedDeformConv2d:
    torch.manual_seed(0)
    return ModulatedDeformConv2d(**LAYER, bias=bias, dtype=dtype).eval()


def _inputs(batch: int, dtype: torch.dtype, with_mask: bool) -> tuple:
    """(input, offset[, mask]) for LAYER; offsets of up to a few pixels, many samples outside the image."""
    out_h, out_w = output_size((HEIGHT, WIDTH), LAYER["kernel_size"], LAYER["stride"], LAYER["padding"],
                               LAYER["dilation"])
    points = OFFSET_GROUPS * 3 * 2
    x = torch.randn(batch, 4, HEIGHT, WIDTH, dtype=dtype)
    offset = 3 * torch.randn(batch, 2 * points, out_h, out_w, dtype=dtype)
    mask = torch.rand(batch, points, out_h, out_w, dtype=dtype)
    return (x, offset, mask) if with_mask else (x, offset)


def _export(how: str, model: torch.nn.Module, args: tuple, **kwargs) -> "torch.onnx.ONNXProgram":
    """model exported to ONNX `how`: "module" (torch.onnx.export, nothing else) or "exported_program"
    (torch.export first, with the dynamic shapes, then rcm_fsad_ops.onnx.export)."""
    if how == "module":
        return torch.onnx.export(model, args, dynamo=True, **kwargs)
    program = torch.export.export(model, args, dynamic_shapes=kwargs.pop("dynamic_shapes", None))
    return rcm_fsad_ops.onnx.export(program, **kwargs)


HOWS = ["module", "exported_program"]


def _run(program: "torch.onnx.ONNXProgram", *inputs: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feeds)[0])


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("modulated", [True, False], ids=["dcnv2", "dcnv1-no-bias"])
def test_exported_layer_runs_in_onnxruntime_as_torchvision(how, dtype, modulated):
    """Traced at batch 2 with a dynamic batch, run by onnxruntime at batch 3: torchvision's result for the
    layer's weight and bias (in float64, on the same values), with the mask (DCNv2) or without it and without
    bias (DCNv1). In float16 the error may be twice that of rounding the exact result to float16 once."""
    layer = _layer(dtype, bias=modulated)
    batch = torch.export.Dim("batch", min=1, max=16)
    names = ["input", "offset", "mask"][:3 if modulated else 2]
    program = _export(how, layer, _inputs(2, dtype, modulated), dynamic_shapes={name: {0: batch} for name in names})

    inputs = _inputs(3, dtype, modulated)
    got = _run(program, *inputs)
    x, offset, *mask = [t.double() for t in inputs]
    want = torchvision.ops.deform_conv2d(x, offset, layer.weight.double(),
                                         None if layer.bias is None else layer.bias.double(), stride=LAYER["stride"],
                                         padding=LAYER["padding"], dilation=LAYER["dilation"],
                                         mask=mask[0] if mask else None)
    assert got.dtype == dtype and got.shape == want.shape
    if dtype == torch.float16:
        rounding = (want.half().double() - want).abs().max().item()
        assert (got.double() - want).abs().max().item() <= 2 * rounding
        return
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance * want.abs().max().item())


@pytest.mark.parametrize("how", HOWS)
def test_export_writes_one_deform_conv_node_with_the_layers_attributes(how, tmp_path):
    path = tmp_path / "layer.onnx"
    _export(how, _layer(torch.float32, bias=True), _inputs(1, torch.float32, True), f=path)

    model = onnx.load(path)
    assert {imp.domain: imp.version for imp in model.opset_import}[""] >= 19
    nodes = [node for node in model.graph.node if node.op_type == "DeformConv"]
    assert len(nodes) == 1
    assert {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute} == {
        "kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 2, 1, 2], "dilations": [2, 1],
        "group": 2, "offset_group": OFFSET_GROUPS}
    assert [i != "" for i in nodes[0].input] == [True] * 5  # input, weight, offset, bias, mask


def test_exported_offset_predicting_layer_runs_at_another_batch_and_image_size():
    """The layer that predicts its offsets and mask (conv2d, sigmoid, the op) in one graph, exported with a
    dynamic batch, height and width; the oracle is F.conv2d then torchvision (the first 2*G*K predicted
    channels are the offsets, the last G*K the mask logits)."""
    torch.manual_seed(0)
    layer = ModulatedDeformConv2dWithOffsetPredictor(4, 6, 3, padding=1, offset_groups=2).eval()
    with torch.no_grad():
        layer.offset_predictor.weight.normal_(std=0.5)
    dims = {0: torch.export.Dim("batch", min=1, max=16), 2: torch.export.Dim("height", min=2, max=64),
            3: torch.export.Dim("width", min=2, max=64)}
    program = torch.onnx.export(layer, (torch.randn(2, 4, 7, 9),), dynamo=True, dynamic_shapes={"input": dims})
    x = torch.randn(5, 4, 12, 5)
    predictor = layer.offset_predictor
    with torch.no_grad():
        predicted = torch.nn.functional.conv2d(x, predictor.weight, predictor.bias, padding=1)
        want = torchvision.ops.deform_conv2d(x, predicted[:, :36], layer.weight, layer.bias, padding=1,
                                             mask=predicted[:, 36:].sigmoid())
    torch.testing.assert_close(_run(program, x), want, rtol=1e-5, atol=1e-5)


def test_export_rejects_an_opset_without_deform_conv():
    with pytest.raises(ValueError, match=r"expected opset_version of at least 19 .*got 18"):
        rcm_fsad_ops.onnx.export(_layer(torch.float32, bias=True), _inputs(1, torch.float32, True), opset_version=18)


def test_export_checks_the_arguments_as_the_op_does():
    x, offset, mask = _inputs(1, torch.float32, True)
    with pytest.raises(Exception, match=r"expected mask of shape \(1, 12, 4, 11\), got \[1, 12, 4, 10\]"):
        torch.onnx.export(_layer(torch.float32, bias=True), (x, offset, mask[..., :10]), dynamo=True)


@pytest.mark.parametrize("how", HOWS)
def test_export_names_a_dynamic_channel_count(how):
    """DeformConv's group is an attribute: channels that vary cannot be exported. (torch.onnx.export alone,
    having failed to trace the module, tries other ways to capture it, which leave the op in the graph, so
    its last error is another: the package's export has the translation that says why.)"""
    class Functional(torch.nn.Module):
        def forward(self, x, offset, weight):
            return rcm_fsad_ops.deform_conv2d(x, offset, weight, padding=1)

    channels = torch.export.Dim("channels", min=1, max=64)
    args = (torch.randn(2, 4, 6, 6), torch.zeros(2, 18, 6, 6), torch.randn(3, 4, 3, 3))
    dynamic_shapes = {"x": {1: channels}, "offset": None, "weight": {1: channels}}
    with pytest.raises(Exception, match=r"ONNX DeformConv needs input\.shape\[1\] to be static"):
        if how == "module":
            rcm_fsad_ops.onnx.export(Functional().eval(), args, dynamic_shapes=dynamic_shapes)
        else:
            _export(how, Functional().eval(), args, dynamic_shapes=dynamic_shapes)


def test_a_callers_translation_takes_precedence():
    def refuse(*args, **kwargs):
        raise RuntimeError("the caller's translation ran")

    program = torch.export.export(_layer(torch.float32, bias=True), _inputs(1, torch.float32, True))
    with pytest.raises(Exception, match="the caller's translation ran"):
        rcm_fsad_ops.onnx.export(program, custom_translation_table={torch.ops.rcm_fsad.deform_conv2d.default: refuse})


def test_the_translation_table_without_onnxscript_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # what `import onnxscript` raises ImportError for
    with pytest.raises(ImportError, match=r"translation_table needs onnxscript.*pip install onnxscript"):
        rcm_fsad_ops.onnx.translation_table()
