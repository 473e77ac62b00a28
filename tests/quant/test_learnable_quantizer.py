"""Quantizers as learnable modules: learned scale and offset with LSQ gradients (checked against the
definition), the encoding following them, nothing changed until a step is taken; and range estimators
whose states merge (as an all-reduce across processes will) into what one estimator over all the data gives."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.errors import NotCalibratedError, SpecError
from lowbit.quant.encoding import Encoding
from lowbit.quant.quantizer import Quantizer
from lowbit.quant.range_estimators import make_estimator
from lowbit.quant.spec import QuantSpec


def _calibrated(spec: QuantSpec, x: torch.Tensor, shape=None) -> Quantizer:
    quantizer = Quantizer(spec)
    quantizer.start_calibration()
    quantizer(x)
    quantizer.finish_calibration(shape)
    return quantizer


def test_learning_changes_nothing_until_a_step_is_taken():
    x = torch.randn(64, 8) * 2
    quantizer = _calibrated(QuantSpec(8), x)
    before = quantizer(x).clone()
    scale, offset = quantizer.scale.clone(), quantizer.offset.clone()
    quantizer.learn_ranges()
    assert {name for name, _ in quantizer.named_parameters()} == {"learned_scale", "learned_zero_point"}
    with torch.no_grad():
        assert torch.equal(quantizer(x), before)
    assert torch.equal(quantizer(x).detach(), before)  # the learnable kernel gives the same values
    assert torch.equal(quantizer.scale, scale) and torch.equal(quantizer.offset, offset)


def test_scale_and_zero_point_get_lsq_gradients():
    x = torch.randn(500) * 3
    quantizer = _calibrated(QuantSpec(8), x[:100])  # calibrated on part: the rest clips on both sides
    quantizer.learn_ranges()
    upstream = torch.randn(500)
    quantizer(x).backward(upstream)
    scale, zero_point = float(quantizer.scale), float(-quantizer.offset)
    levels = 255
    scaled = x / scale
    grid = torch.round(scaled) + zero_point
    inside = (grid >= 0) & (grid <= levels)
    # LSQ (Esser et al. 2020): ∂q/∂s = round(x/s) − x/s inside the range, qmin − zp or qmax − zp outside;
    # ∂q/∂zp = 0 inside, −s outside; both scaled by g = 1/sqrt(N · qmax)
    factor = 1 / math.sqrt(x.numel() * levels)
    d_scale = torch.where(inside, torch.round(scaled) - scaled,
                          torch.where(grid < 0, torch.tensor(-zero_point), torch.tensor(levels - zero_point)))
    d_zero = torch.where(inside, torch.tensor(0.0), torch.tensor(-scale))
    assert quantizer.learned_scale.grad.item() == pytest.approx(float((upstream * d_scale).sum()) * factor, rel=1e-4)
    assert quantizer.learned_zero_point.grad.item() == pytest.approx(float((upstream * d_zero).sum()) * factor,
                                                                     rel=1e-4)


def test_a_step_moves_the_encoding_the_export_reads():
    torch.manual_seed(0)
    weight = torch.randn(4, 16)
    quantizer = _calibrated(QuantSpec(4, symmetric=True, axis=0), weight, weight.shape)
    quantizer.learn_ranges()
    optimizer = torch.optim.SGD(quantizer.parameters(), lr=0.1)
    first = None
    for _ in range(20):
        optimizer.zero_grad()
        loss = ((quantizer(weight) - weight) ** 2).mean()
        loss.backward()
        optimizer.step()
        first = float(loss.detach()) if first is None else first
    final = float(((quantizer(weight) - weight) ** 2).mean().detach())
    assert final < first
    assert torch.equal(quantizer.scale, quantizer.learned_scale.detach())
    with torch.no_grad():  # the eval path reads the encoding, which follows the learned values
        zero_point = (-quantizer.offset).to(torch.int32)
        expected = torch.fake_quantize_per_channel_affine(weight, quantizer.scale, zero_point, 0, 0, 15)
        assert torch.equal(quantizer(weight), expected)
    quantizer.learn_ranges(False)
    assert list(quantizer.parameters()) == []


def test_learning_needs_an_encoding_and_a_supported_spec():
    with pytest.raises(NotCalibratedError):
        Quantizer(QuantSpec(8)).learn_ranges()
    blocked = Quantizer(QuantSpec(4, symmetric=True, axis=0, block_size=8))
    blocked.encoding = Encoding.from_range(blocked.spec, -torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(SpecError):
        blocked.learn_ranges()


@pytest.mark.parametrize("scheme", ["minmax", "mean_minmax", "percentile", "sqnr", "entropy"])
def test_estimator_states_merge_into_the_estimate_over_all_data(scheme):
    torch.manual_seed(1)
    spec = QuantSpec(8)
    batches = [torch.randn(8, 3, 10, 10) * (1 + i) for i in range(4)]
    whole = make_estimator(scheme, spec)
    for batch in batches:
        whole.observe(batch)
    halves = [make_estimator(scheme, spec), make_estimator(scheme, spec)]
    for index, batch in enumerate(batches):
        halves[index % 2].observe(batch)
    halves[0].merge(halves[1])
    assert halves[0].batches == whole.batches
    merged, expected = halves[0].range(), whole.range()
    if scheme == "minmax":  # extremes: exact
        assert all(torch.equal(a, b) for a, b in zip(merged, expected))
    elif scheme == "mean_minmax":  # sums: the same up to the order of float additions
        assert all(torch.allclose(a, b, rtol=1e-6, atol=0) for a, b in zip(merged, expected))
    else:  # histograms re-binned onto the common range: within a bin of the single estimate
        width = float(expected[1] - expected[0]) / 2048 * 4
        assert all(float((a - b).abs().max()) <= width for a, b in zip(merged, expected))
