"""Bias correction: the shift formula against convolutions, removal of a known mean output error,
cache invalidation in the sim, bad input, analytical input means against sampled ones, and the
effect of both modes on the real MobileNetV2."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.algorithms.bias_correction import InputMean, expected_output_shift
from lowbit.algorithms.bias_correction_analytical import clipped_normal_mean
from lowbit.errors import DataError, NotCalibratedError, SpecError
from lowbit.torch.batchnorm_fold import fold_into
from lowbit.torch.weight_quantized import WeightQuantized


@pytest.mark.parametrize("in_channels,out_channels,groups,dims", [
    (6, 4, 1, 2), (6, 4, 2, 2), (6, 6, 6, 2), (4, 8, 4, 1), (3, 5, 1, 3)])
def test_shift_equals_convolution_of_constant_input(in_channels, out_channels, groups, dims):
    gen = torch.Generator().manual_seed(0)
    kernel = (3,) * dims
    error = torch.randn(out_channels, in_channels // groups, *kernel, generator=gen, dtype=torch.float64)
    mean = torch.randn(in_channels, generator=gen, dtype=torch.float64)
    constant = mean.reshape(1, -1, *(1,) * dims).expand(1, in_channels, *(5,) * dims)
    convolve = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    exact = convolve(constant, error, groups=groups).reshape(out_channels, -1)[:, 0]
    torch.testing.assert_close(expected_output_shift(error, mean, groups), exact)


def test_shift_of_linear_and_input_mean():
    gen = torch.Generator().manual_seed(1)
    error = torch.randn(3, 5, generator=gen)
    x = torch.randn(4, 7, 5, generator=gen) + torch.arange(5.0)
    mean = InputMean(channel_dim=-1)
    mean.observe(x[:1])
    mean.observe(x[1:])
    torch.testing.assert_close(mean.mean.float(), x.reshape(-1, 5).mean(dim=0))
    torch.testing.assert_close(expected_output_shift(error, mean.mean.float()), error @ x.reshape(-1, 5).mean(dim=0))
    conv_mean = InputMean(channel_dim=1)
    images = torch.randn(3, 4, 6, 6, generator=gen)
    conv_mean.observe(images)
    torch.testing.assert_close(conv_mean.mean.float(), images.mean(dim=(0, 2, 3)))


def _known_error_linear(gen: torch.Generator) -> tuple[nn.Sequential, torch.Tensor]:
    """A Linear layer whose per-channel symmetric 4-bit scale is exactly 1 (every row's largest weight
    is 7 = 2**3 − 1), so W_q = round(W); every other weight is an integer + 0.25, so W_q − W is −0.25
    there and 0 at the maximum."""
    out_features, in_features = 4, 16
    integers = torch.randint(-6, 7, (out_features, in_features), generator=gen).float()
    weight = integers + 0.25
    weight[:, 0] = 7.0
    model = nn.Sequential(nn.Linear(in_features, out_features))
    with torch.no_grad():
        model[0].weight.copy_(weight)
        model[0].bias.copy_(torch.randn(out_features, generator=gen))
    error = torch.full_like(weight, -0.25)
    error[:, 0] = 0.0
    return model.eval(), error


def test_removes_a_known_mean_output_error():
    gen = torch.Generator().manual_seed(2)
    model, error = _known_error_linear(gen)
    user_bias = model[0].bias.detach().clone()
    channel_means = torch.linspace(0.5, 2.0, 16)
    draw = lambda: channel_means + 0.3 * torch.randn(64, 16, generator=gen)
    calibration = [draw() for _ in range(4)]
    sim = lowbit.quantize(model, calibration, target="w4a8")
    wrapper = sim.model.get_submodule("0")
    with torch.no_grad():
        torch.testing.assert_close(wrapper.weight_quantizer(wrapper.layer.weight) - wrapper.layer.weight, error)
    expected_shift = error @ channel_means  # independent of the sim: (W_q − W) E[x]
    fresh = torch.cat([draw() for _ in range(8)])

    def measured_shift() -> torch.Tensor:
        with torch.no_grad():
            return (sim(fresh) - model(fresh)).mean(dim=0)

    before = measured_shift()
    torch.testing.assert_close(before, expected_shift, rtol=0.05, atol=0.05)
    bias_before = wrapper.layer.bias.detach().clone()
    result = lowbit.correct_bias(sim, calibration)
    assert result.corrected == ("0",) and result.skipped == () and result.batches == 4
    assert result.mean_abs_shift == pytest.approx(float(expected_shift.abs().mean()), rel=0.05)
    torch.testing.assert_close(bias_before - wrapper.layer.bias.detach(), expected_shift, rtol=0.05, atol=0.05)
    after = measured_shift()
    assert float(after.abs().max()) < 0.05 * float(before.abs().min())
    assert torch.equal(model[0].bias.detach(), user_bias)  # the user's model is untouched


@pytest.mark.parametrize("target,bias", [("cpu-int8", True), ("cpu-int8", False), ("w4a8", False)])
def test_cached_layer_state_follows_the_new_bias(target, bias):
    """The sim caches each layer's frozen form (integer form on cpu-int8); the corrected bias must
    reach it: the output after correction equals one computed with every cache dropped."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=bias), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    data = [torch.rand(4, 3, 6, 6) + 0.5 for _ in range(2)]
    sim = lowbit.quantize(model, data, param_bits=4, target=target)
    with torch.no_grad():
        before = sim(data[0])  # fills the caches
    result = lowbit.correct_bias(sim, data)
    assert set(result.corrected) == {"0", "2", "5"}
    for name in result.corrected:
        assert sim.model.get_submodule(name).layer.bias is not None
    with torch.no_grad():
        cached = sim(data[0])
        for module in sim.model.modules():
            if isinstance(module, WeightQuantized):
                module.__dict__.pop("_frozen_cache", None)
        recomputed = sim(data[0])
    assert not torch.equal(cached, before)
    torch.testing.assert_close(cached, recomputed, rtol=0, atol=0)


def test_bad_input():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    data = [torch.randn(8, 4)]
    with pytest.raises(NotCalibratedError):
        lowbit.correct_bias(lowbit.QuantSim(model, data[0]), data)
    sim = lowbit.quantize(model, data)
    with pytest.raises(DataError):
        lowbit.correct_bias(sim, [])
    with pytest.raises(DataError, match="needs data"):
        lowbit.correct_bias(sim)
    with pytest.raises(SpecError, match="unknown"):
        lowbit.correct_bias(sim, data, mode="magic")


def test_skips_and_names_unsupported_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ConvTranspose2d(4, 2, 2, stride=2)).eval()
    data = [torch.randn(2, 3, 4, 4)]
    sim = lowbit.quantize(model, data)
    result = lowbit.correct_bias(sim, data)
    assert result.corrected == ("0",) and result.skipped == ("1",)


@pytest.mark.parametrize("low,high", [(-math.inf, math.inf), (0.0, math.inf), (0.0, 6.0)],
                         ids=["identity", "relu", "relu6"])
@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (1.5, 0.5), (-2.0, 1.5), (4.0, 2.0), (5.8, 0.3)])
def test_clipped_normal_mean_matches_sampling(mean, std, low, high):
    gen = torch.Generator().manual_seed(5)
    samples = (mean + std * torch.randn(1_000_000, generator=gen, dtype=torch.float64)).clamp(low, high)
    standard_error = float(samples.std()) / math.sqrt(samples.numel())
    derived = float(clipped_normal_mean(torch.tensor([mean]), torch.tensor([std]), low, high))
    assert abs(derived - float(samples.mean())) <= 4 * standard_error + 1e-12


def test_clipped_normal_mean_of_a_constant_is_the_clamped_constant():
    means = torch.tensor([-1.0, 3.0, 7.0])
    torch.testing.assert_close(clipped_normal_mean(means, torch.zeros(3), 0.0, 6.0),
                               torch.tensor([0.0, 3.0, 6.0], dtype=torch.float64))


def _normal_batchnorm_net(gen: torch.Generator) -> nn.Sequential:
    """Conv(1x1) → BN → ReLU → Conv(3x3, unpadded). For N(0, 1) inputs the first conv's output channel
    c is exactly N(b_c, ‖W_c‖²); the BN's running statistics are those, so its output is N(β, γ²) as
    analytical mode assumes. Channel 0 has β − 3|γ| > 0 (a high bias that equalization absorbs)."""
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3))
    conv, batchnorm = model[0], model[1]
    with torch.no_grad():
        conv.weight.copy_(torch.randn(8, 4, 1, 1, generator=gen))
        conv.bias.copy_(torch.randn(8, generator=gen))
        batchnorm.running_mean.copy_(conv.bias)
        batchnorm.running_var.copy_(conv.weight.flatten(1).pow(2).sum(dim=1) - batchnorm.eps)
        signs = torch.tensor([1.0, -1, 1, 1, -1, 1, 1, 1])
        batchnorm.weight.copy_((torch.rand(8, generator=gen) + 0.3) * signs)
        batchnorm.bias.copy_(torch.randn(8, generator=gen))
        batchnorm.weight[0], batchnorm.bias[0] = 0.5, 4.0
    return model.eval()


def _expected_shift_and_error(wrapper: WeightQuantized, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_q − W)·mean(inputs) for a 3x3 conv, from sampled inputs, and its standard error."""
    with torch.no_grad():
        error = (wrapper.weight_quantizer(wrapper.layer.weight) - wrapper.layer.weight).sum(dim=(2, 3)).double()
    channels = inputs.transpose(0, 1).reshape(inputs.shape[1], -1).double()
    standard_error = channels.std(dim=1) / math.sqrt(channels.shape[1])
    return error @ channels.mean(dim=1), ((error * standard_error) ** 2).sum(dim=1).sqrt()


def test_analytical_correction_equals_the_one_from_the_true_input_mean():
    gen = torch.Generator().manual_seed(6)
    model = _normal_batchnorm_net(gen)
    data = [torch.randn(16, 4, 8, 8, generator=gen) for _ in range(2)]
    samples = torch.randn(1024, 4, 8, 8, generator=gen)
    folded = copy.deepcopy(model)
    assert lowbit.fold_batchnorm(folded, data[0][:1]) == [("0", "1")]
    sim = lowbit.QuantSim(folded, data[0][:1], target="w4a8").calibrate(data)
    measured_sim = copy.deepcopy(sim)
    wrapper = sim.model.get_submodule("3")
    with torch.no_grad():
        expected, standard_error = _expected_shift_and_error(wrapper, model[:3](samples))
    bias_before = wrapper.layer.bias.detach().clone()
    result = lowbit.correct_bias(sim, mode="analytical")
    assert result.corrected == ("3",) and result.from_statistics == ("3",) and result.skipped == ("0",)
    assert result.batches == 0 and str(result).startswith("bias correction (analytical): 1 layers (1 from")
    shift = (bias_before - wrapper.layer.bias.detach()).double()
    assert bool(((shift - expected).abs() <= 4 * standard_error + 1e-6).all())

    empirical = lowbit.correct_bias(measured_sim, [samples[i:i + 256] for i in range(0, 1024, 256)])
    measured_shift = bias_before - measured_sim.model.get_submodule("3").layer.bias.detach()
    torch.testing.assert_close(shift.float(), measured_shift, rtol=0, atol=0.1 * float(measured_shift.abs().max()))
    assert empirical.corrected == ("0", "3")


def test_analytical_mode_measures_underivable_layers_on_data():
    gen = torch.Generator().manual_seed(7)
    model = _normal_batchnorm_net(gen)
    data = [torch.randn(16, 4, 8, 8, generator=gen) for _ in range(2)]
    lowbit.fold_batchnorm(model, data[0][:1])
    sim = lowbit.QuantSim(model, data[0][:1], target="w4a8").calibrate(data)
    measured_sim = copy.deepcopy(sim)
    first = sim.model.get_submodule("0").layer
    moments = first.folded_batchnorm.moments(first)
    result = lowbit.correct_bias(sim, data, mode="analytical")
    assert result.corrected == ("0", "3") and result.from_statistics == ("3",) and result.batches == 2
    lowbit.correct_bias(measured_sim, data)
    assert torch.equal(first.bias, measured_sim.model.get_submodule("0").layer.bias)  # same measured mean
    for before, after in zip(moments, first.folded_batchnorm.moments(first)):
        torch.testing.assert_close(after, before)  # the correction keeps the recorded statistics


def test_analytical_correction_follows_equalization():
    """Cross-layer equalization rescales the first conv's channels and absorbs channel 0's high bias
    into the second conv; the recorded statistics follow both."""
    gen = torch.Generator().manual_seed(8)
    model = _normal_batchnorm_net(gen)
    data = [torch.randn(16, 4, 8, 8, generator=gen) for _ in range(2)]
    samples = torch.randn(1024, 4, 8, 8, generator=gen)
    model, groups = lowbit.equalize(model, data[0][:1])
    assert groups[0].high_bias_absorbed == ("0",)
    with torch.no_grad():
        pre_activation = model[0](samples).transpose(0, 1).reshape(8, -1)
    mean, std = model[0].folded_batchnorm.moments(model[0])
    torch.testing.assert_close(mean, pre_activation.mean(dim=1).double(), rtol=0, atol=0.02)
    torch.testing.assert_close(std, pre_activation.std(dim=1).double(), rtol=0.02, atol=0)
    sim = lowbit.QuantSim(model, data[0][:1], target="w4a8").calibrate(data)
    wrapper = sim.model.get_submodule("3")
    with torch.no_grad():
        expected, standard_error = _expected_shift_and_error(wrapper, model[:3](samples))
    bias_before = wrapper.layer.bias.detach().clone()
    assert lowbit.correct_bias(sim, mode="analytical").corrected == ("3",)
    shift = (bias_before - wrapper.layer.bias.detach()).double()
    assert bool(((shift - expected).abs() <= 4 * standard_error + 1e-6).all())


class _DataDependent(nn.Module):
    """Conv → ReLU → Conv with a branch on the data: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = torch.relu(self.first(x))
        return self.second(y if y.sum() > 0 else -y)


def test_analytical_mode_needs_a_graph():
    """A sim that quantizes leaf modules only has no graph to follow statistics along: analytical
    mode measures every layer on data, or skips it."""
    model = _DataDependent().eval()
    fold_into(model.first, _trained_batchnorm(4))
    data = [torch.randn(4, 3, 6, 6) for _ in range(2)]
    with pytest.warns(UserWarning, match="could not trace"):
        sim = lowbit.QuantSim(model, data[0], target="w4a8").calibrate(data)
    without_data = lowbit.correct_bias(sim, mode="analytical")
    assert without_data.corrected == () and len(without_data.skipped) == 2
    result = lowbit.correct_bias(sim, data, mode="analytical")
    assert result.corrected == without_data.skipped and result.from_statistics == () and result.batches == 2


def _trained_batchnorm(channels: int) -> nn.BatchNorm2d:
    gen = torch.Generator().manual_seed(channels)
    batchnorm = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        batchnorm.running_mean.copy_(torch.randn(channels, generator=gen))
        batchnorm.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
        batchnorm.bias.copy_(torch.randn(channels, generator=gen))
    return batchnorm


def _agreement_and_error(sim, references, eval_batches) -> tuple[float, float]:
    agree, error, count = 0, 0.0, 0
    with torch.no_grad():
        for batch, reference in zip(eval_batches, references):
            simulated = sim(batch)
            agree += int((reference.argmax(dim=1) == simulated.argmax(dim=1)).sum())
            error += float((simulated - reference).abs().mean()) * len(batch)
            count += len(batch)
    return agree / count, error / count


@pytest.fixture(scope="module")
def references(mobilenet, eval_batches):
    """MobileNetV2's FP32 outputs on the eval batches."""
    with torch.no_grad():
        return [mobilenet(batch) for batch in eval_batches]


@pytest.fixture(scope="module")
def uncorrected(references, folded_mobilenet, calibration_batches, eval_batches):
    """A fresh copy of a calibrated sim of the BN-folded MobileNetV2 for a target, and its top-1
    agreement with FP32 and mean |output − FP32| (each target's sim is built once)."""
    built = {}

    def get(target: str):
        if target not in built:
            sim = lowbit.QuantSim(folded_mobilenet[0], calibration_batches[0][:1], target=target)
            sim.calibrate(calibration_batches)
            built[target] = sim, _agreement_and_error(sim, references, eval_batches)
        sim, numbers = built[target]
        return copy.deepcopy(sim), numbers
    return get


@pytest.mark.slow
@pytest.mark.parametrize("target", ["w4a8", "cpu-int8"])
def test_mobilenet_output_error_decreases(references, uncorrected, calibration_batches, eval_batches, target):
    sim, (agreement_before, error_before) = uncorrected(target)
    result = lowbit.correct_bias(sim, calibration_batches)
    agreement_after, error_after = _agreement_and_error(sim, references, eval_batches)
    print(f"\n{target}: {result}; top-1 agreement with FP32 {agreement_before:.1%} -> {agreement_after:.1%}, "
          f"mean |output - FP32| {error_before:.4f} -> {error_after:.4f}")
    assert len(result.corrected) == 53 and result.skipped == ()
    assert error_after < error_before


@pytest.mark.slow
def test_mobilenet_analytical_correction_without_data(references, uncorrected, eval_batches):
    """Every layer but the first gets its input mean from folded BatchNorm statistics: after ReLU6,
    after a projection (no activation), through residual additions, and through the average pool."""
    sim, (agreement_before, error_before) = uncorrected("w4a8")
    result = lowbit.correct_bias(sim, None, mode="analytical")
    agreement_after, error_after = _agreement_and_error(sim, references, eval_batches)
    print(f"\nw4a8: {result}; top-1 agreement with FP32 {agreement_before:.1%} -> {agreement_after:.1%}, "
          f"mean |output - FP32| {error_before:.4f} -> {error_after:.4f}")
    assert result.skipped == ("features.0.0",) and result.batches == 0  # its input is the image
    assert len(result.corrected) == 52 and result.from_statistics == result.corrected
    assert "features.4.conv.0.0" in result.corrected and "classifier.1" in result.corrected  # after an add, the pool
    assert agreement_after > agreement_before + 0.4 and error_after < error_before


def test_created_biases_reach_the_export(tmp_path):
    """Layers without a bias get one; the QDQ export carries it and onnxruntime matches the sim."""
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.ReLU()).eval()
    data = [torch.rand(4, 3, 6, 6) + 0.5 for _ in range(2)]
    sim = lowbit.quantize(model, data, target="cpu-int8")
    lowbit.correct_bias(sim, data)
    session = onnxruntime.InferenceSession(str(sim.export(tmp_path, name="corrected").qdq_onnx))
    exported = session.run(None, {session.get_inputs()[0].name: data[0].numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(exported), sim(data[0]), rtol=0, atol=0)


def test_quantize_applies_techniques_in_order_and_rejects_unknown_ones():
    torch.manual_seed(0)
    from lowbit.zoo import tiny_resnet
    model = tiny_resnet().eval()
    data = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    plain = lowbit.quantize(model, data, target="w4a8")
    treated = lowbit.quantize(model, data, target="w4a8", techniques=["equalize", "bias_correction"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
        assert not torch.equal(plain(x), treated(x))
        plain_error = (plain(x) - reference).abs().mean()
        treated_error = (treated(x) - reference).abs().mean()
    print(f"\ntiny_resnet w4a8 mean |error|: nearest {plain_error:.4f}, equalize + bias correction {treated_error:.4f}")
    assert treated_error < plain_error
    with pytest.raises(SpecError, match="unknown technique 'gptq'"):
        lowbit.quantize(model, data, techniques=["gptq"])
    with pytest.raises(SpecError, match="adaround and bias_correction exclude each other"):
        lowbit.quantize(model, data, techniques=["bias_correction", "adaround"])
