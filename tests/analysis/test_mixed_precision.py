"""lowbit.mixed_precision on the planted CNN: the Pareto front is monotone, the chosen point meets the
target and is what the sim and its exported encodings hold, and the planted layer keeps its precision."""

from __future__ import annotations

import json

import pytest
import torch

import lowbit
from lowbit.analysis.bitwidths import BitwidthSetter
from lowbit.analysis.layers import layer_groups
from lowbit.analysis.mixed_precision import pareto_front, ParetoPoint
from lowbit.errors import SpecError
from lowbit.runtime import session

@pytest.fixture(scope="module")
def chosen(planted, tmp_path_factory):
    model, data = planted
    sim = lowbit.quantize(model, data, example_input=data[0][:1])
    result = lowbit.mixed_precision(sim, data, allowed_drop=0.05,  # W8A8, W4A8, W8A16, W16A16
                                    out_dir=tmp_path_factory.mktemp("mp"))
    return sim, result


def _agreement(model, sim, data) -> float:
    with torch.no_grad():
        same = sum(int((model(x).argmax(1) == sim(x).argmax(1)).sum()) for x in data)
    return same / sum(len(x) for x in data)


def test_front_is_monotone_and_the_chosen_point_meets_the_target(chosen):
    _, result = chosen
    costs, scores = [p.cost for p in result.pareto], [p.score for p in result.pareto]
    assert costs == sorted(costs) and scores == sorted(scores) and len(set(costs)) == len(costs)
    assert result.chosen.score >= result.target == pytest.approx(1.0 - 0.05)
    meeting = [p for p in result.evaluated if p.score >= result.target]
    assert result.chosen.cost == min(p.cost for p in meeting)
    assert result.chosen.cost < max(p.cost for p in result.evaluated)


def test_the_sim_holds_the_chosen_bitwidths_and_scores_as_reported(chosen, planted):
    sim, result = chosen
    model, data = planted
    assert _agreement(model, sim, data) == pytest.approx(result.chosen.score)
    quantizers = sim.quantizers()
    for name, (weight_bits, activation_bits) in result.chosen.bitwidths.items():
        group = [p for p in sim.points if (p.module == name and p.role == "weight")]
        for point in group:
            assert quantizers[point.key].encoding.spec.bits == weight_bits


def test_the_planted_activation_keeps_sixteen_bits_and_the_rest_is_cheaper(chosen):
    _, result = chosen
    assert result.chosen.bitwidths["conv2"][1] == 16
    assert result.phase1["conv2"][(8, 8)] < result.phase1["conv1"][(8, 8)]
    assert result.chosen.mean_weight_bits < 8


def test_exported_encodings_carry_the_chosen_bitwidths(chosen, planted, machine_kernels, tmp_path):
    sim, result = chosen
    paths = sim.export(tmp_path, name="mixed")
    runtime = session(paths.qdq_onnx)
    sim.runtime = machine_kernels  # compared with onnxruntime on this CPU
    for x in planted[1]:
        with torch.no_grad():
            simulated = sim(x)
        executed = runtime.run(None, {runtime.get_inputs()[0].name: x.numpy()})[0]
        assert (executed.argmax(1) == simulated.argmax(1).numpy()).all()
    document = json.loads(paths.encodings.read_text())
    params = {e["name"]: e["bw"] for e in document["param_encodings"]}
    for name, (weight_bits, _) in result.chosen.bitwidths.items():
        if f"{name}.weight" in params:
            assert params[f"{name}.weight"] == weight_bits


def test_report_and_pareto_helper(chosen):
    _, result = chosen
    text = result.report_path.read_text()
    assert text.count("<svg") == 1 and "chosen" in text
    points = [ParetoPoint(c, 0, s, {}, 8) for c, s in [(3, 0.5), (1, 0.6), (2, 0.4), (4, 0.9), (5, 0.9)]]
    assert [(p.cost, p.score) for p in pareto_front(points)] == [(1, 0.6), (4, 0.9)]


def test_bad_candidates(planted):
    model, data = planted
    sim = lowbit.quantize(model, data, example_input=data[0][:1])
    with pytest.raises(SpecError, match="candidate"):
        lowbit.mixed_precision(sim, data, candidates=[(8, 1)])


def test_weight_bits_budget_picks_the_best_point_that_fits(planted, tmp_path):
    model, data = planted
    sim = lowbit.quantize(model, data, example_input=data[0][:1])
    result = lowbit.mixed_precision(sim, data, candidates=[(8, 16), (4, 16)], weight_bits_budget=6.0,
                                    out_dir=tmp_path)
    fitting = [p for p in result.evaluated if p.mean_weight_bits <= 6.0]
    assert result.chosen.mean_weight_bits <= 6.0
    assert result.chosen.score == max(p.score for p in fitting)


def test_weights_frozen_by_adaround_keep_their_bits(planted, tmp_path):
    model, data = planted
    sim = lowbit.quantize(model, data, example_input=data[0][:1], target="w4a8")
    lowbit.adaround(sim, data, num_iterations=20)
    rounded = {k: q.encoding.scale.clone() for k, q in sim.quantizers().items() if q.frozen}
    result = lowbit.mixed_precision(sim, data, allowed_drop=0.05, out_dir=tmp_path)
    assert rounded and all(p.mean_weight_bits == 4 for p in result.evaluated)
    assert {bits[0] for p in result.evaluated for name, bits in p.bitwidths.items()
            if f"{name}.weight" in rounded} == {4}
    quantizers = sim.quantizers()
    assert all(torch.equal(quantizers[k].encoding.scale, scale) for k, scale in rounded.items())


def test_a_choice_takes_its_weight_bits_ranges_and_the_most_precise_activation_ranges(planted):
    """At W4A8 a layer's weights take the ranges of a sim quantized at W4A8 and its activations those of
    a sim quantized at W8A8: the all-W4A8 model's activation ranges are not what a mostly 8-bit model sees."""
    model, data = planted
    example = data[0][:1]
    sim = lowbit.quantize(model, data, example_input=example)
    groups = layer_groups(sim)
    setter = BitwidthSetter(sim)
    setter.calibrate_at(groups, [(8, 8), (4, 8)], data)
    for group in groups:
        setter.apply(group, (4, 8))
    at_w8 = lowbit.quantize(model, data, example_input=example).quantizers()
    at_w4 = lowbit.quantize(model, data, example_input=example, param_bits=4).quantizers()
    quantizers = sim.quantizers()
    weights = [k for g in groups for k in g.weights]
    activations = [k for g in groups for k in g.activations]
    for key in weights:
        assert quantizers[key].encoding.spec.bits == 4
        torch.testing.assert_close(quantizers[key].encoding.scale, at_w4[key].encoding.scale)
    for key in activations:
        torch.testing.assert_close(quantizers[key].encoding.scale, at_w8[key].encoding.scale)
    assert any(not torch.allclose(at_w8[k].encoding.scale, at_w4[k].encoding.scale) for k in activations)
