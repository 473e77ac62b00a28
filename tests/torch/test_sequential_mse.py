"""Sequential MSE: the per-channel choice against a brute-force search, frozen encodings that survive
recalibration and export, the effect on the real MobileNetV2 at w4a8, and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.errors import DataError, NotCalibratedError, SpecError
from lowbit.torch.sequential_mse import sequential_mse

WEIGHT_LEVELS = 7  # 4-bit signed symmetric: scale = max |range| / (2**3 − 1)


def _outlier_linear_and_data(gen: torch.Generator) -> tuple[nn.Sequential, list[torch.Tensor]]:
    """A Linear layer whose weight rows each hold one outlier of a different size (the last row none)
    on a zero-mean input feature of small spread (clipping it costs little), and four batches of inputs."""
    model = nn.Sequential(nn.Linear(16, 6))
    weight = 0.5 * torch.randn(6, 16, generator=gen)
    weight[torch.arange(5), torch.arange(5)] = torch.tensor([1.5, -2.5, 3.5, -5.0, 8.0])
    with torch.no_grad():
        model[0].weight.copy_(weight)
        model[0].bias.copy_(torch.randn(6, generator=gen))
    spread = torch.cat([torch.full((5,), 0.1), torch.ones(11)])
    mean = torch.cat([torch.zeros(5), torch.linspace(-1, 1, 11)])
    data = [spread * torch.randn(128, 16, generator=gen) + mean for _ in range(4)]
    return model.eval(), data


def _brute_force(sim, model, data, num_candidates, loss, per_channel):
    """Every candidate scale c · max|W| / 7 (c = 1/N … 1) tried on the full data with F.linear: the
    candidate scales ``[N, channels or 1]``, the output MSE of each ``[N, out]`` and the argmin of
    ``loss`` (per channel, or of its mean over channels)."""
    x = torch.cat(data)
    input_quantizer = next(q for key, q in sim.quantizers().items() if sim.point(key).role == "input")
    scale, offset = input_quantizer.scale, input_quantizer.offset
    x_quantized = ((torch.round(x / scale) - offset).clamp(0, 255) + offset) * scale
    weight, bias = model[0].weight.detach(), model[0].bias.detach()
    largest = weight.abs().amax(dim=1, keepdim=True) if per_channel else weight.abs().max()
    target = F.linear(x, weight, bias)
    scales, mse, losses = [], [], []
    for c in torch.arange(1, num_candidates + 1) / num_candidates:
        candidate_scale = c * largest / WEIGHT_LEVELS
        quantized = torch.clamp(torch.round(weight / candidate_scale), -8, 7) * candidate_scale
        error = F.linear(x_quantized, quantized, bias) - target
        channel_mse = error.square().mean(dim=0)
        channel_loss = {"mse": channel_mse, "l1": error.abs().mean(dim=0),
                        "sqnr": 10 * torch.log10(channel_mse / target.square().mean(dim=0))}[loss]
        scales.append(candidate_scale.reshape(-1))
        mse.append(channel_mse)
        losses.append(channel_loss if per_channel else channel_loss.mean().reshape(1))
    return torch.stack(scales), torch.stack(mse), torch.stack(losses).argmin(dim=0)


@pytest.mark.parametrize("loss,per_channel", [("mse", True), ("l1", True), ("sqnr", True), ("mse", False),
                                              ("sqnr", False)])
def test_chooses_the_brute_force_argmin(loss, per_channel):
    gen = torch.Generator().manual_seed(0)
    model, data = _outlier_linear_and_data(gen)
    sim = lowbit.QuantSim(model, data[0], target="w4a8", per_channel=per_channel).calibrate(data)
    result = sequential_mse(sim, data, num_candidates=10, loss=loss)
    scales, mse, best = _brute_force(sim, model, data, 10, loss, per_channel)
    print(f"\n{loss}, per-channel {per_channel}: chosen c = {((best + 1) / 10).tolist()}")
    assert bool((best < 9).any())  # not simply min-max
    channels = torch.arange(len(best))
    chosen_scale = sim.model.get_submodule("0").weight_quantizer.scale.reshape(-1)
    torch.testing.assert_close(chosen_scale, scales[best, channels])
    assert result.optimized == ("0",) and result.skipped == {}
    chosen_mse = mse[best, channels] if per_channel else mse[best[0]]
    assert result.mse_before[0] == pytest.approx(float(mse[-1].mean()), rel=1e-4)
    assert result.mse_after[0] == pytest.approx(float(chosen_mse.mean()), rel=1e-4)


def test_encodings_stay_frozen_through_recalibration_and_export(tmp_path):
    gen = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                          nn.ReLU(), nn.ConvTranspose2d(8, 4, 2, stride=2)).eval()
    data = [torch.randn(4, 3, 10, 10, generator=gen) for _ in range(2)]
    sim = lowbit.QuantSim(model, data[0], target="w4a8").calibrate(data)
    minmax = {key: q.scale.clone() for key, q in sim.quantizers().items() if sim.point(key).role == "weight"}
    with torch.no_grad():
        output_before = sim(data[0])
    result = sequential_mse(sim, data, max_rows=256)
    assert result.optimized == ("0", "2") and set(result.skipped) == {"4"}
    assert "ConvTranspose2d" in result.skipped["4"] and "skipped 4 (ConvTranspose2d" in str(result)
    chosen = {key: sim.quantizers()[key].scale.clone() for key in minmax}
    assert not torch.equal(chosen["0.weight"], minmax["0.weight"])
    assert torch.equal(chosen["4.weight"], minmax["4.weight"])
    with torch.no_grad():
        assert not torch.equal(sim(data[0]), output_before)  # the sim's cached layers see the new encodings
    sim.calibrate(data)
    for key, scale in chosen.items():
        assert torch.equal(sim.quantizers()[key].scale, scale)
    paths = sim.export(tmp_path, name="sequential_mse")
    fresh = lowbit.load_encodings(lowbit.QuantSim(model, data[0], target="w4a8"), paths.encodings)
    for key, scale in chosen.items():
        torch.testing.assert_close(fresh.quantizers()[key].scale, scale, rtol=1e-6, atol=0)
        assert torch.equal(fresh.quantizers()[key].offset, sim.quantizers()[key].offset)


def _agreement(sim, reference_top1, batches) -> float:
    with torch.no_grad():
        agree = sum(int((sim(batch).argmax(dim=1) == top1).sum()) for batch, top1 in zip(batches, reference_top1))
    return agree / sum(len(batch) for batch in batches)


@pytest.mark.slow
def test_mobilenet_w4a8_output_error_and_agreement(mobilenet, folded_mobilenet, calibration_batches, eval_batches):
    """Two images and 256 rows a layer keep this quick (every layer reruns the sim up to itself); the
    agreement is measured on the first 25 evaluation images."""
    model, _ = folded_mobilenet
    sim = lowbit.QuantSim(model, calibration_batches[0][:1], target="w4a8").calibrate(calibration_batches)
    batches = eval_batches[:1]
    with torch.no_grad():
        reference_top1 = [mobilenet(batch).argmax(dim=1) for batch in batches]
    agreement_before = _agreement(sim, reference_top1, batches)
    result = sequential_mse(sim, [calibration_batches[0][:2]], max_rows=256)
    agreement_after = _agreement(sim, reference_top1, batches)
    print(f"\nw4a8: {result}; top-1 agreement with FP32 {agreement_before:.0%} -> {agreement_after:.0%}")
    assert len(result.optimized) == 53 and result.skipped == {}
    assert all(after <= before for before, after in zip(result.mse_before, result.mse_after))
    assert result.mean_mse_change < -0.1
    assert agreement_after > agreement_before + 0.3


def test_bad_input():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    data = [torch.randn(8, 4)]
    with pytest.raises(NotCalibratedError):
        sequential_mse(lowbit.QuantSim(model, data[0]), data)
    sim = lowbit.quantize(model, data)
    with pytest.raises(SpecError, match="unknown sequential MSE loss 'l3'"):
        sequential_mse(sim, data, loss="l3")
    with pytest.raises(SpecError, match="num_candidates"):
        sequential_mse(sim, data, num_candidates=0)
    with pytest.raises(SpecError, match="max_rows"):
        sequential_mse(sim, data, max_rows=0)
    with pytest.raises(DataError, match="asked for 2 batches"):
        sequential_mse(sim, data, num_batches=2)
    with pytest.raises(DataError, match="empty"):
        sequential_mse(sim, [])
    sim.model.get_submodule("0").weight_quantizer.mode = "off"
    assert sequential_mse(sim, data).skipped == {"0": "weight quantizer disabled"}
    assert sim.model.get_submodule("0").weight_quantizer.mode == "off"
