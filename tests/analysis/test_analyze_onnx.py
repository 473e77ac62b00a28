"""lowbit.analyze on the ONNX front end: the planted layer of SmallNet's ONNX export is found first,
and the figures equal SQNRs computed by hand from torch and from onnxruntime runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lowbit
from lowbit.onnx import OnnxQuantSim
from lowbit.runtime import session


def _sqnr(reference, output):
    reference, output = (torch.as_tensor(np.asarray(v)).double() for v in (reference, output))
    return 10 * math.log10(float(reference.square().sum()) / float((output - reference).square().sum()))


@pytest.fixture(scope="module")
def onnx_analysis(planted, tmp_path_factory):
    """The planted model exported to ONNX, quantized with the cpu-int8 preset (7-bit weights where
    onnxruntime's int16 pairs could saturate, 8-bit where its sums are exact) and analysed."""
    model, data = planted
    folder = tmp_path_factory.mktemp("onnx_analysis")
    path = folder / "small.onnx"
    torch.onnx.export(model, (data[0][:1],), str(path), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    sim = lowbit.quantize(str(path), data, target="cpu-int8")
    return path, sim, lowbit.analyze(sim, data, out_dir=folder / "report")


def test_planted_layer_is_found_first(onnx_analysis):
    _, sim, result = onnx_analysis
    first = result.layers[0]
    assert first.name == "/conv2/Conv" and first.op_type == "Conv"
    assert {sim.point(k).role for k in first.quantizers} == {"weight", "output"}
    assert first.activation_only < first.weight_only
    assert [layer.only for layer in result.layers] == sorted(layer.only for layer in result.layers)


def test_conv1_weights_only_match_torch_with_fake_quantized_weights(onnx_analysis, planted):
    """A second method: torch runs the model with conv1's weight rounded by hand to the sim's grid."""
    _, sim, result = onnx_analysis
    model, data = planted
    encoding = sim.quantizers()[sim.point(next(k for k in sim.quantizers() if sim.point(k).node == "/conv1/Conv"
                                                and sim.point(k).role == "weight")).key].encoding
    scale = encoding.scale.reshape(-1, 1, 1, 1)
    weight = model.conv1.weight.detach()
    rounded = torch.clamp(torch.round(weight / scale), encoding.min.reshape(-1, 1, 1, 1) / scale,
                          encoding.max.reshape(-1, 1, 1, 1) / scale) * scale
    with torch.no_grad():
        reference = torch.cat([model(x) for x in data])
        original = model.conv1.weight.clone()
        model.conv1.weight.copy_(rounded)
        output = torch.cat([model(x) for x in data])
        model.conv1.weight.copy_(original)
    conv1 = next(layer for layer in result.layers if layer.name == "/conv1/Conv")
    assert conv1.weight_only == pytest.approx(_sqnr(reference, output), abs=0.05)


def test_whole_model_score_is_the_qdq_graph_in_onnxruntime(onnx_analysis, planted):
    path, sim, result = onnx_analysis
    _, data = planted
    fp32 = session(path)
    reference = np.concatenate([fp32.run(None, {"image": x.numpy()})[0] for x in data])
    exported = sim.export(path.parent / "export", "small")
    qdq = session(exported.qdq_onnx)
    output = np.concatenate([qdq.run(None, {"image": x.numpy()})[0] for x in data])
    assert result.quantized_score == pytest.approx(_sqnr(reference, output), abs=1e-3)
    assert result.float_score > 100
    assert all(q.mode == "quantize" for q in sim.quantizers().values())


def test_weight_ranges_histograms_and_report(onnx_analysis, planted):
    _, _, result = onnx_analysis
    model, _ = planted
    conv2 = result.layers[0]
    mins, maxs = conv2.weight_ranges
    torch.testing.assert_close(torch.tensor(maxs), model.conv2.weight.detach().flatten(1).amax(1))
    torch.testing.assert_close(torch.tensor(mins), model.conv2.weight.detach().flatten(1).amin(1))
    view = conv2.activation
    assert sum(view.counts) == 8 * 8 * 12 * 12 and view.clip[0] <= 0 <= view.clip[1] and view.mse > 0
    assert view.clip[1] >= 200  # the planted constant channel sets relu2's range
    text = result.report_path.read_text()
    assert all(layer.name in text for layer in result.layers)


def test_an_onnx_path_is_quantized_then_analysed(onnx_analysis, planted, tmp_path):
    path, _, result = onnx_analysis
    _, data = planted
    direct = lowbit.analyze(str(path), data, out_dir=tmp_path, target="cpu-int8")
    assert isinstance(direct.layers, list) and direct.layers[0].name == result.layers[0].name
    assert direct.quantized_score == pytest.approx(result.quantized_score, abs=1e-6)
