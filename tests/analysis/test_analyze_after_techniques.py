"""lowbit.analyze after AdaRound or bias correction, which write rounded weights and shifted biases into the model:
its float reference is still the float model, and a layer's weights-only figure puts that layer's quantized weights
into the float model, on both front ends; the sim computes what it did before."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import lowbit
from lowbit.onnx.graph_view import GraphFacts
from lowbit.onnx.layers import weighted_layer
from lowbit.runtime import session

TECHNIQUES = {
    "adaround": lambda sim, data: lowbit.adaround(sim, data, num_iterations=50, granularity="layer"),
    "bias_correction": lambda sim, data: lowbit.correct_bias(sim, data),
}


def _sqnr(reference, output):
    reference, output = (torch.as_tensor(np.asarray(v)).double() for v in (reference, output))
    return 10 * math.log10(float(reference.square().sum()) / float((output - reference).square().sum()))


def _with_conv1(model, weight: torch.Tensor, bias: torch.Tensor, data) -> torch.Tensor:
    """The float model's outputs with conv1's weight and bias replaced (the bias as the technique left it)."""
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.conv1.weight.copy_(weight)
        changed.conv1.bias.copy_(bias)
        return torch.cat([changed(x) for x in data])


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_torch_sim(planted, technique, tmp_path):
    model, data = planted
    sim = lowbit.quantize(model, data, example_input=data[0][:1])
    TECHNIQUES[technique](sim, data)
    with torch.no_grad():
        before = torch.cat([sim(x) for x in data])
        reference = torch.cat([model(x) for x in data])
    result = lowbit.analyze(sim, data, out_dir=tmp_path)
    with torch.no_grad():
        assert torch.equal(torch.cat([sim(x) for x in data]), before)
    layer = sim.model.get_submodule("conv1")
    with torch.no_grad():
        quantized = layer.weight_quantizer(layer.layer.weight)
    by_hand = _with_conv1(model, quantized, layer.layer.bias, data)
    conv1 = next(figures for figures in result.layers if figures.name == "conv1")
    assert conv1.weight_only == pytest.approx(_sqnr(reference, by_hand), abs=1e-3)
    assert result.quantized_score == pytest.approx(_sqnr(reference, before), abs=1e-3)


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_onnx_sim(planted, technique, tmp_path):
    model, data = planted
    path = tmp_path / "small.onnx"
    torch.onnx.export(model, (data[0][:1],), str(path), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    sim = lowbit.quantize(str(path), data, target="cpu-int8")
    TECHNIQUES[technique](sim, data)
    before = np.concatenate([sim(x)[0] for x in data])
    fp32 = session(path)
    reference = np.concatenate([fp32.run(None, {"image": x.numpy()})[0] for x in data])
    result = lowbit.analyze(sim, data, out_dir=tmp_path / "report")
    assert np.array_equal(np.concatenate([sim(x)[0] for x in data]), before)
    key = next(k for k in sim.quantizers() if sim.point(k).node == "/conv1/Conv" and sim.point(k).role == "weight")
    facts = GraphFacts(sim.model)
    bias = weighted_layer(facts, next(n for n in facts.graph.node if n.name == "/conv1/Conv")).bias.float()
    by_hand = _with_conv1(model, sim.quantizers()[key](sim.weight(key)), bias, data)
    conv1 = next(figures for figures in result.layers if figures.name == "/conv1/Conv")
    assert conv1.weight_only == pytest.approx(_sqnr(reference, by_hand), abs=0.05)
    assert result.quantized_score == pytest.approx(_sqnr(reference, before), abs=1e-3)
