"""lowbit.mixed_precision on the ONNX front end: layer costs equal the torch front end's (and a hand
count), and the chosen point's score is what onnxruntime computes from the exported QDQ file."""

from __future__ import annotations

import json

import pytest
import torch

import lowbit
from lowbit.analysis.bitwidths import layer_costs
from lowbit.analysis.layers import layer_groups
from lowbit.runtime import session


@pytest.fixture(scope="module")
def onnx_mixed(planted, tmp_path_factory):
    """Mixed precision on the planted model's ONNX export (W8A8 ⋯ W16A16 candidates)."""
    model, data = planted
    folder = tmp_path_factory.mktemp("onnx_mixed")
    path = folder / "small.onnx"
    torch.onnx.export(model, (data[0][:1],), str(path), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    sim = lowbit.quantize(str(path), data)
    return sim, lowbit.mixed_precision(sim, data, allowed_drop=0.05, out_dir=folder / "report")


def test_onnx_layer_costs_equal_the_torch_front_ends(onnx_mixed, planted):
    """A second method: the torch front end measures MACs with hooks on the modules; conv1 also by hand."""
    sim, _ = onnx_mixed
    model, data = planted
    onnx_costs = layer_costs(sim, layer_groups(sim), ((data[0],), {}))
    torch_sim = lowbit.quantize(model, data, example_input=data[0][:1])
    torch_costs = layer_costs(torch_sim, layer_groups(torch_sim), ((data[0],), {}))
    assert onnx_costs["/conv1/Conv"].macs == 12 * 12 * 8 * (3 * 3 * 3)
    for name, node in [("conv1", "/conv1/Conv"), ("conv2", "/conv2/Conv"), ("conv3", "/conv3/Conv"), ("fc", "/fc/Gemm")]:
        assert (onnx_costs[node].macs, onnx_costs[node].weights) == (torch_costs[name].macs, torch_costs[name].weights)


def test_onnx_mixed_precision_meets_the_target_in_onnxruntime(onnx_mixed, planted, tmp_path):
    """The chosen point's score is recomputed from the exported QDQ file against torch's float outputs,
    and the encodings file carries the chosen bitwidths."""
    sim, result = onnx_mixed
    model, data = planted
    costs = [p.cost for p in result.pareto]
    assert costs == sorted(costs) and result.chosen.score >= result.target
    assert result.chosen.cost < max(p.cost for p in result.evaluated)
    paths = sim.export(tmp_path, name="mixed")
    runtime = session(paths.qdq_onnx)
    same = sum(int((runtime.run(None, {"image": x.numpy()})[0].argmax(1) == model(x).argmax(1).numpy()).sum())
               for x in data)
    assert same / 24 == pytest.approx(result.chosen.score)
    document = json.loads(paths.encodings.read_text())
    weights = {sim.point(k).node: e["bw"] for e in document["param_encodings"]
               for k in sim.quantizers() if sim.point(k).role == "weight" and sim.point(k).module == e["name"]}
    assert weights and all(weights[node] == bits[0] for node, bits in result.chosen.bitwidths.items()
                           if node in weights)
