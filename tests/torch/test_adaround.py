"""AdaRound: the rounding math against its definitions, learned rounding against nearest rounding on a
small network (recomputed with F.conv2d), on-grid weights and frozen encodings through recalibration
and export, bad input, skipped layers, MobileNetV2 at w4a8, and ``quantize(techniques=...)``."""

from __future__ import annotations

import math
import re

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

import lowbit
from lowbit.algorithms.adaround import (annealed_beta, grid_weight, initial_alpha, rectified_sigmoid,
                                        rounding_regularizer)
from lowbit.errors import DataError, LowbitError, NotCalibratedError, OptimizationError, SpecError
from lowbit.quant.fake_quant import fake_quantize

WEIGHT_LOW, WEIGHT_HIGH = -8, 7  # grid indices of a 4-bit signed symmetric weight
WEIGHTED = ("0", "2", "5")


def _small_network() -> tuple[nn.Sequential, list[torch.Tensor]]:
    """Conv2d → ReLU → Conv2d → ReLU → Linear with seeded random weights, and two batches of inputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    gen = torch.Generator().manual_seed(1)
    return model, [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(2)]


def _w4a8(model: nn.Module, data: list[torch.Tensor]) -> lowbit.QuantSim:
    return lowbit.QuantSim(model, data[0], target="w4a8").calibrate(data)


def test_rectified_sigmoid_reaches_0_and_1_and_matches_its_definition():
    alpha = torch.tensor([-50.0, -3.0, -1.0, 0.0, 0.5, 2.0, 3.0, 50.0])
    expected = [min(max(1.2 / (1 + math.exp(-a)) - 0.1, 0.0), 1.0) for a in alpha.tolist()]
    h = rectified_sigmoid(alpha)
    torch.testing.assert_close(h, torch.tensor(expected), rtol=0, atol=1e-6)
    assert h[:2].tolist() == [0.0, 0.0] and h[-2:].tolist() == [1.0, 1.0]


def test_initial_alpha_inverts_the_rectified_sigmoid():
    remainder = torch.linspace(0, 1, 101)
    torch.testing.assert_close(rectified_sigmoid(initial_alpha(remainder)), remainder, rtol=0, atol=1e-5)


def test_rounding_regularizer_hand_values():
    decided = torch.tensor([0.0, 1.0, 1.0, 0.0])
    assert [float(rounding_regularizer(decided, beta)) for beta in (2.0, 20.0)] == [0.0, 0.0]
    assert float(rounding_regularizer(torch.full((3,), 0.5), 20.0)) == 3.0  # each term 1 − 0^β
    # h = 0.25: 1 − 0.5² = 0.75; h = 0.9: 1 − 0.8² = 0.36
    assert float(rounding_regularizer(torch.tensor([0.25, 0.9]), 2.0)) == pytest.approx(1.11)


def test_annealed_beta_warm_start_then_cosine_from_20_to_2():
    assert annealed_beta(0, 100, 0.2) is None and annealed_beta(19, 100, 0.2) is None
    assert annealed_beta(20, 100, 0.2) == pytest.approx(20.0)
    assert annealed_beta(60, 100, 0.2) == pytest.approx(11.0)  # halfway: cos(π/2) = 0
    assert annealed_beta(99, 100, 0.2) == pytest.approx(2 + 9 * (1 + math.cos(79 / 80 * math.pi)))
    assert annealed_beta(99, 100, 0.2) == pytest.approx(2.0, abs=0.01)
    assert annealed_beta(100, 100, 0.2) == pytest.approx(2.0)


def test_grid_weight_clamps_the_index_to_the_grid():
    floor = torch.tensor([-10.0, -3.0, 0.0, 6.0, 7.0])
    h = torch.tensor([0.0, 1.0, 0.5, 1.0, 1.0])
    weight = grid_weight(floor, h, torch.tensor(0.1), torch.tensor(-8.0), torch.tensor(7.0))
    torch.testing.assert_close(weight, torch.tensor([-0.8, -0.2, 0.05, 0.7, 0.7]))


@pytest.mark.slow
def test_learned_rounding_beats_nearest_on_the_first_layer():
    """Layer 0 sees the quantized model input, and every one of its 2 · 4 · 64 output positions is a
    cached row, so F.conv2d (then the ReLU after it) over the whole data gives the reported MSEs."""
    model, data = _small_network()
    sim = _w4a8(model, data)
    input_quantizer = next(q for key, q in sim.quantizers().items() if sim.point(key).role == "input")
    scale = sim.model.get_submodule("0").weight_quantizer.scale.clone().reshape(-1, 1, 1, 1)
    result = lowbit.adaround(sim, data, granularity="layer", num_iterations=300)
    weight, bias = model[0].weight.detach(), model[0].bias.detach()
    ratio = weight / scale
    nearest = torch.round(ratio).clamp(WEIGHT_LOW, WEIGHT_HIGH) * scale
    rounded = sim.model.get_submodule("0").layer.weight.detach()
    index = rounded / scale
    down, up = torch.isclose(index, ratio.floor(), atol=1e-4), torch.isclose(index, ratio.ceil(), atol=1e-4)
    assert bool((down | up).all())  # each weight rounded down or up, never further
    changed = int((~torch.isclose(rounded, nearest, atol=1e-6)).sum())
    x = torch.cat(data)
    x_scale, x_offset = input_quantizer.scale, input_quantizer.offset
    x_quantized = ((torch.round(x / x_scale) - x_offset).clamp(0, 255) + x_offset) * x_scale
    target = F.relu(F.conv2d(x, weight, bias, padding=1))
    nearest_mse = float((F.relu(F.conv2d(x_quantized, nearest, bias, padding=1)) - target).square().mean())
    rounded_mse = float((F.relu(F.conv2d(x_quantized, rounded, bias, padding=1)) - target).square().mean())
    print(f"\nlayer 0: {changed} of {weight.numel()} weights rounded away from nearest; output MSE "
          f"{nearest_mse:.3g} -> {rounded_mse:.3g}; {result}")
    first = result.layers[0]
    assert [layer.name for layer in result.layers] == list(WEIGHTED)
    assert first.nearest_mse == pytest.approx(nearest_mse, rel=1e-4)
    assert first.rounded_mse == pytest.approx(rounded_mse, rel=1e-4)
    assert changed > 0 and rounded_mse < 0.95 * nearest_mse
    assert all(layer.rounded_mse < layer.nearest_mse for layer in result.layers)
    assert result.mean_error_change < -0.1


def test_bias_correction_leaves_adarounded_layers_alone():
    """AdaRound fits each layer's output mean on quantized inputs; bias correction after it must not
    shift those biases again, and says so."""
    model, data = _small_network()
    sim = _w4a8(model, data)
    sim.model.get_submodule("5").weight_quantizer.mode = "off"
    lowbit.adaround(sim, data, granularity="layer", num_iterations=50)
    biases = {name: sim.model.get_submodule(name).layer.bias.detach().clone() for name in WEIGHTED}
    result = lowbit.correct_bias(sim, data)
    assert set(result.skipped) == {"0", "2"} and result.corrected == ("5",)
    for name in ("0", "2"):
        torch.testing.assert_close(sim.model.get_submodule(name).layer.bias.detach(), biases[name], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("num_iterations", [1, 300])
def test_weights_on_the_grid_and_frozen_through_recalibration_and_export(num_iterations, tmp_path):
    """One iteration leaves the learned rounding no better than nearest in some layer: that layer must
    get the nearest-rounded weight, on the grid too."""
    model, data = _small_network()
    sim = _w4a8(model, data)
    result = lowbit.adaround(sim, data, granularity="layer", num_iterations=num_iterations)
    kept_nearest = [layer.name for layer in result.layers if layer.rounded_mse == layer.nearest_mse]
    assert bool(kept_nearest) == (num_iterations == 1)
    wrappers = {name: sim.model.get_submodule(name) for name in WEIGHTED}
    weights = {name: w.layer.weight.detach().clone() for name, w in wrappers.items()}
    scales = {name: w.weight_quantizer.scale.clone() for name, w in wrappers.items()}
    offsets = {name: w.weight_quantizer.offset.clone() for name, w in wrappers.items()}
    for name, wrapper in wrappers.items():
        encoding = wrapper.weight_quantizer.encoding
        assert wrapper.weight_quantizer.frozen
        torch.testing.assert_close(fake_quantize(weights[name], encoding), weights[name], rtol=0, atol=1e-6)
        if name in kept_nearest:
            nearest = fake_quantize(model.get_submodule(name).weight.detach(), encoding)
            torch.testing.assert_close(weights[name], nearest, rtol=0, atol=1e-6)
    sim.calibrate(data)
    for name, wrapper in wrappers.items():
        assert torch.equal(wrapper.weight_quantizer.scale, scales[name])
        assert torch.equal(wrapper.weight_quantizer.offset, offsets[name])
        assert torch.equal(wrapper.layer.weight, weights[name])
    paths = sim.export(tmp_path, name="adaround")
    initializers = onnx.load(str(paths.onnx)).graph.initializer
    exported = {t.name: torch.tensor(numpy_helper.to_array(t)) for t in initializers}
    fresh = lowbit.load_encodings(lowbit.QuantSim(model, data[0], target="w4a8"), paths.encodings)
    for name in WEIGHTED:
        assert torch.equal(exported[f"{name}.weight"], weights[name])
        loaded = fresh.quantizers()[f"{name}.weight"]
        torch.testing.assert_close(loaded.scale, scales[name], rtol=1e-6, atol=0)
        assert torch.equal(loaded.offset, offsets[name])


def _one_line_error(error_type, call) -> str:
    with pytest.raises(error_type) as caught:
        call()
    assert isinstance(caught.value, LowbitError) and "\n" not in str(caught.value)
    return str(caught.value)


def test_bad_input():
    model, data = _small_network()
    uncalibrated = lowbit.QuantSim(model, data[0], target="w4a8")
    message = _one_line_error(NotCalibratedError, lambda: lowbit.adaround(uncalibrated, data))
    assert message == "adaround needs a calibrated sim: call sim.calibrate(data) first"
    sim = _w4a8(model, data)
    message = _one_line_error(DataError, lambda: lowbit.adaround(sim, data, num_batches=3))
    assert message == "adaround asked for 3 batches but the data has only 2"
    message = _one_line_error(SpecError, lambda: lowbit.adaround(sim, data, num_iterations=0))
    assert message == "num_iterations, batch_rows, max_rows, batch_samples and block_layers must be at least 1"
    assert not any(sim.model.get_submodule(name).weight_quantizer.frozen for name in WEIGHTED)


def test_non_finite_loss_names_the_layer():
    """A weight of layer 2 set to inf after calibration (as a diverged update would leave it) makes the
    float target and the soft weight non-finite; layer 0, before it, is rounded and frozen."""
    model, data = _small_network()
    sim = _w4a8(model, data)
    with torch.no_grad():
        sim.model.get_submodule("2").layer.weight[0, 0, 0, 0] = math.inf
    message = _one_line_error(OptimizationError, lambda: lowbit.adaround(sim, data, granularity="layer", num_iterations=20))
    assert message == "adaround: non-finite loss at layer '2', iteration 1"
    assert sim.model.get_submodule("0").weight_quantizer.frozen
    assert not sim.model.get_submodule("2").weight_quantizer.frozen


def test_disabled_weight_quantizer_is_skipped():
    model, data = _small_network()
    sim = _w4a8(model, data)
    sim.model.get_submodule("2").weight_quantizer.mode = "off"
    result = lowbit.adaround(sim, data, granularity="layer", num_iterations=50)
    assert [layer.name for layer in result.layers] == ["0", "5"]
    assert result.skipped == {"2": "weight quantizer disabled"}
    assert str(result).endswith(", skipped 2 (weight quantizer disabled)")
    skipped = sim.model.get_submodule("2")
    assert torch.equal(skipped.layer.weight, model[2].weight) and not skipped.weight_quantizer.frozen
    assert skipped.weight_quantizer.mode == "off"


class _Branchy(nn.Module):
    """``b`` runs only on batches of more than four rows; ``up`` is a ConvTranspose1d."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.up = nn.Linear(4, 4), nn.Linear(4, 4), nn.ConvTranspose1d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        if x.shape[0] > 4:
            y = self.b(y)
        return self.up(y.unsqueeze(-1)).squeeze(-1)


def test_unreached_and_unsupported_layers_are_skipped():
    torch.manual_seed(2)
    model = _Branchy().eval()
    data = [torch.randn(2, 4), torch.randn(8, 4)]
    with pytest.warns(UserWarning, match="could not trace"):
        sim = lowbit.QuantSim(model, data[0], target="w4a8")
    sim.calibrate(data)
    result = lowbit.adaround(sim, data, granularity="layer", num_iterations=50)
    assert [layer.name for layer in result.layers] == ["a.layer"]
    assert result.skipped == {"b.layer": "not reached by the first batch",
                              "up.layer": "ConvTranspose1d is not a Conv1d, Conv2d or Linear"}
    for name, original in (("b.layer", model.b), ("up.layer", model.up)):
        wrapper = sim.model.get_submodule(name)
        assert torch.equal(wrapper.layer.weight, original.weight) and not wrapper.weight_quantizer.frozen
    assert sim.model.get_submodule("a.layer").weight_quantizer.frozen


def _agreement(sim, reference_top1, batches) -> float:
    with torch.no_grad():
        agree = sum(int((sim(batch).argmax(dim=1) == top1).sum())
                    for batch, top1 in zip(batches, reference_top1))
    return agree / sum(len(batch) for batch in batches)


@pytest.mark.slow
def test_mobilenet_w4a8_agreement(mobilenet, folded_mobilenet, calibration_batches, eval_batches):
    """One image and 50 steps of 128 rows a layer keep this quick (every layer reruns the sim up to
    itself); the agreement is measured on the first 50 evaluation images."""
    model, _ = folded_mobilenet
    sim = lowbit.QuantSim(model, calibration_batches[0][:1], target="w4a8").calibrate(calibration_batches)
    batches = eval_batches[:2]
    with torch.no_grad():
        reference_top1 = [mobilenet(batch).argmax(dim=1) for batch in batches]
    agreement_before = _agreement(sim, reference_top1, batches)
    result = lowbit.adaround(sim, [calibration_batches[0][:1]], granularity="layer", num_iterations=50, batch_rows=128,
                             max_rows=2048)
    sim.calibrate(calibration_batches)
    agreement_after = _agreement(sim, reference_top1, batches)
    print(f"\nw4a8: {result}; top-1 agreement with FP32 {agreement_before:.0%} -> {agreement_after:.0%}")
    assert len(result.layers) == 53 and result.skipped == {}
    assert all(layer.rounded_mse <= layer.nearest_mse for layer in result.layers)
    assert result.mean_error_change < -0.1
    assert agreement_after > agreement_before + 0.3


@pytest.mark.slow
def test_quantize_runs_adaround_then_recalibrates():
    """quantize(techniques=["adaround"]) equals quantize, adaround with its defaults, then calibrate."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    data = [torch.randn(32, 16) for _ in range(2)]
    treated = lowbit.quantize(model, data, target="w4a8", techniques=["adaround"])
    by_hand = lowbit.quantize(model, data, target="w4a8")
    result = lowbit.adaround(by_hand, data)
    by_hand.calibrate(data)
    line = treated.technique_results[-1]
    assert line.startswith("adaround: 2 layers in 1 block, ")
    without_time = lambda text: re.sub(r", \d+ s,", ",", text)
    assert without_time(line) == without_time(str(result))
    for key, quantizer in treated.quantizers().items():
        assert torch.equal(quantizer.scale, by_hand.quantizers()[key].scale)
    for name in ("0", "2"):
        weight = treated.model.get_submodule(name).layer.weight
        assert torch.equal(weight, by_hand.model.get_submodule(name).layer.weight)
        assert not torch.equal(weight, model.get_submodule(name).weight)
