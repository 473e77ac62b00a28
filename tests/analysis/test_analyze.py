"""lowbit.analyze on a small CNN with one planted sensitive layer: the layer is found first, figures
match a by-hand computation, and the report is one HTML file holding every plot."""

from __future__ import annotations

import copy
import math
from html.parser import HTMLParser

import pytest
import torch

import lowbit
from lowbit.errors import NotCalibratedError, SpecError


@pytest.fixture(scope="module")
def analysis(planted, tmp_path_factory):
    model, data = planted
    sim = lowbit.quantize(model, data, example_input=data[0][:1])
    return sim, lowbit.analyze(sim, data, out_dir=tmp_path_factory.mktemp("report"))


def _sqnr(reference, output):
    return 10 * math.log10(float(reference.double().square().sum()) / float((output - reference).double().square().sum()))


def test_planted_layer_is_found_first_and_through_its_weights(analysis):
    _, result = analysis
    first = result.layers[0]
    assert first.name == "conv2" and first.quantizers == ("conv2.weight", "relu2")
    assert first.activation_only < first.weight_only
    assert [layer.only for layer in result.layers] == sorted(layer.only for layer in result.layers)


def test_only_conv1_weights_match_a_by_hand_fake_quantized_weight(analysis, planted):
    sim, result = analysis
    model, data = planted
    encoding = sim.quantizers()["conv1.weight"].encoding
    scale = encoding.scale.reshape(-1, 1, 1, 1)
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        rounded = torch.round(model.conv1.weight / scale) * scale
        by_hand.conv1.weight.copy_(torch.maximum(torch.minimum(rounded, encoding.max.reshape(-1, 1, 1, 1)),
                                                 encoding.min.reshape(-1, 1, 1, 1)))
        reference = torch.cat([model(x) for x in data])
        output = torch.cat([by_hand(x) for x in data])
    conv1 = next(layer for layer in result.layers if layer.name == "conv1")
    assert conv1.weight_only == pytest.approx(_sqnr(reference, output), abs=1e-3)


def test_whole_model_score_and_float_score(analysis, planted):
    sim, result = analysis
    model, data = planted
    with torch.no_grad():
        reference = torch.cat([model(x) for x in data])
        output = torch.cat([sim(x) for x in data])
    assert result.quantized_score == pytest.approx(_sqnr(reference, output), abs=1e-3)
    assert result.float_score > 100  # the sim with every quantizer off is the float model
    assert all(q.mode == "quantize" for q in sim.quantizers().values())  # modes restored


@pytest.mark.slow
def test_weight_ranges_and_histograms(analysis, planted):
    _, result = analysis
    model, _ = planted
    conv2 = next(layer for layer in result.layers if layer.name == "conv2")
    mins, maxs = conv2.weight_ranges
    torch.testing.assert_close(torch.tensor(maxs), model.conv2.weight.detach().flatten(1).amax(1))
    torch.testing.assert_close(torch.tensor(mins), model.conv2.weight.detach().flatten(1).amin(1))
    view = conv2.activation
    assert view.key.startswith("relu2") and sum(view.counts) == 8 * 8 * 12 * 12
    assert view.clip[0] <= 0 <= view.clip[1] and view.mse > 0


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.counts, self.errors = [], {}, []

    def handle_starttag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag not in ("meta", "br"):
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.counts[tag] = self.counts.get(tag, 0) + 1

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_report_is_one_balanced_html_file_with_every_plot(analysis):
    _, result = analysis
    text = result.report_path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "http" not in text.replace("http://www.w3.org/2000/svg", "")
    tags = _Tags()
    tags.feed(text)
    assert not tags.errors and not tags.stack
    with_weights = sum(1 for layer in result.layers if layer.weight_ranges)
    with_activations = sum(1 for layer in result.layers if layer.activation is not None)
    assert tags.counts["svg"] == 2 + with_weights + with_activations
    assert all(layer.name in text for layer in result.layers)


def test_bad_input(planted):
    model, data = planted
    sim = lowbit.QuantSim(model, data[0][:1])
    with pytest.raises(NotCalibratedError):
        lowbit.analyze(sim, data)
    with pytest.raises(SpecError, match="an ONNX model, not int"):
        lowbit.analyze(3, data)


@pytest.mark.slow
@pytest.mark.parametrize("metric,net", [("sqnr", "planted"), ("agreement", "planted"), ("sqnr", "tiny_resnet")])
def test_forked_runs_give_the_figures_of_whole_runs(planted, metric, net):
    from lowbit.analysis.layers import layer_configurations, layer_groups
    from lowbit.analysis.sensitivity import _layer_figures, enabled_only, make_scorer
    from lowbit.analysis.sensitivity import METRICS
    model, data = planted
    if net == "tiny_resnet":  # residual adds and a ReLU module called at several places
        from lowbit.zoo.resnet import tiny_resnet
        model, data = tiny_resnet().eval(), [torch.randn(2, 3, 32, 32)]
    sim = lowbit.quantize(model, data, example_input=data[0][:1], target="w4a8")
    calls = [((x,), {}) for x in data]
    groups = layer_groups(sim)
    score, _, reference = make_scorer(sim, calls, None, metric)
    forked = sim.forked_outputs(calls, groups, {g.name: layer_configurations(g) for g in groups}, enabled_only)
    function = METRICS[metric][1]
    for group in groups:
        whole = _layer_figures(sim, group, set(sim.quantizers()), score)
        assert function(reference, forked[(group.name, "only")]) == pytest.approx(whole.only, rel=1e-6)
        assert function(reference, forked[(group.name, "all_but")]) == pytest.approx(whole.all_but, rel=1e-6)
        if (group.name, "weight_only") in forked:
            assert function(reference, forked[(group.name, "weight_only")]) == pytest.approx(whole.weight_only, rel=1e-6)
