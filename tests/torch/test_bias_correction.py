"""Bias correction: the shift formula against convolutions, removal of a known mean output error,
cache invalidation in the sim, bad input, and the effect on the real MobileNetV2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.algorithms.bias_correction import InputMean, expected_output_shift
from lowbit.errors import DataError, NotCalibratedError, SpecError
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
    with pytest.raises(SpecError, match="not implemented"):
        lowbit.correct_bias(sim, data, mode="analytical")
    with pytest.raises(SpecError, match="unknown"):
        lowbit.correct_bias(sim, data, mode="magic")


def test_skips_and_names_unsupported_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ConvTranspose2d(4, 2, 2, stride=2)).eval()
    data = [torch.randn(2, 3, 4, 4)]
    sim = lowbit.quantize(model, data)
    result = lowbit.correct_bias(sim, data)
    assert result.corrected == ("0",) and result.skipped == ("1",)


def _agreement_and_error(sim, model, eval_batches) -> tuple[float, float]:
    agree, error, count = 0, 0.0, 0
    with torch.no_grad():
        for batch in eval_batches:
            reference, simulated = model(batch), sim(batch)
            agree += int((reference.argmax(dim=1) == simulated.argmax(dim=1)).sum())
            error += float((simulated - reference).abs().mean()) * len(batch)
            count += len(batch)
    return agree / count, error / count


@pytest.mark.parametrize("target", ["w4a8", "cpu-int8"])
def test_mobilenet_output_error_decreases(mobilenet, calibration_batches, eval_batches, target):
    sim = lowbit.quantize(mobilenet, calibration_batches, example_input=calibration_batches[0][:1], target=target)
    agreement_before, error_before = _agreement_and_error(sim, mobilenet, eval_batches)
    result = lowbit.correct_bias(sim, calibration_batches)
    agreement_after, error_after = _agreement_and_error(sim, mobilenet, eval_batches)
    print(f"\n{target}: {result}; top-1 agreement with FP32 {agreement_before:.1%} -> {agreement_after:.1%}, "
          f"mean |output - FP32| {error_before:.4f} -> {error_after:.4f}")
    assert len(result.corrected) == 53 and result.skipped == ()
    assert error_after < error_before


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
    with pytest.raises(SpecError, match="unknown technique 'adaround'"):
        lowbit.quantize(model, data, techniques=["adaround"])
