"""Range estimators and the streaming histogram against direct computations on the raw data."""

import math

import pytest
import torch

from lowbit.errors import NotCalibratedError, SpecError
from lowbit.quant.clipping_search import candidate_ranges, entropy_range, threshold_ranges
from lowbit.quant.encoding import Encoding
from lowbit.quant.fake_quant import dequantize, quantize
from lowbit.quant.histogram import StreamingHistogram, row_aminmax
from lowbit.quant.range_estimators import (SCHEMES, EntropyEstimator, PercentileEstimator,
                                           make_estimator)
from lowbit.quant.spec import QuantSpec


def batches(seed=0, count=4, channels=3, rows=256):
    """[rows, channels] batches whose spread grows, so later batches widen the observed range."""
    generator = torch.Generator().manual_seed(seed)
    spread = torch.tensor([0.5, 2.0, 10.0])[:channels]
    return [torch.randn(rows, channels, generator=generator) * spread * (1 + i) + i
            for i in range(count)]


def observed(estimator, data):
    """``estimator`` after observing every batch of ``data``."""
    for batch in data:
        estimator.observe(batch)
    return estimator


def test_minmax_per_tensor_is_global_min_max():
    data = batches()
    lo, hi = observed(make_estimator("minmax", QuantSpec(8)), data).range()
    everything = torch.cat(data)
    assert lo.tolist() == [everything.min().item()] and hi.tolist() == [everything.max().item()]


def test_minmax_per_channel_is_min_max_of_each_channel():
    data = batches()
    lo, hi = observed(make_estimator("minmax", QuantSpec(8, axis=1)), data).range()
    everything = torch.cat(data)
    assert torch.equal(lo, everything.amin(0)) and torch.equal(hi, everything.amax(0))


def images(seed=0, count=7):
    """[count, 3, 5, 4] activations whose per-image spread differs, as a batch of feature maps."""
    generator = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.5, 4.0, count)[:, None, None, None]
    return torch.randn(count, 3, 5, 4, generator=generator) * spread + 0.3


@pytest.mark.parametrize("split", [1, 3, 7])
def test_mean_minmax_per_tensor_averages_each_images_min_and_max(split):
    data = images()
    lo, hi = observed(make_estimator("mean_minmax", QuantSpec(8)), data.split(split)).range()
    expected_lo = sum(image.min().item() for image in data) / len(data)
    expected_hi = sum(image.max().item() for image in data) / len(data)
    assert lo.item() == pytest.approx(expected_lo, rel=1e-6) and hi.item() == pytest.approx(expected_hi, rel=1e-6)


def test_mean_minmax_per_channel_averages_each_images_channel_min_and_max():
    data = images()
    lo, hi = observed(make_estimator("mean_minmax", QuantSpec(8, axis=1)), data.split(2)).range()
    for channel in range(3):
        values = [image[channel] for image in data]
        assert lo[channel].item() == pytest.approx(sum(v.min().item() for v in values) / 7, rel=1e-6)
        assert hi[channel].item() == pytest.approx(sum(v.max().item() for v in values) / 7, rel=1e-6)


def test_mean_minmax_lies_within_minmax():
    data = images().split(2)
    mean_lo, mean_hi = observed(make_estimator("mean_minmax", QuantSpec(8)), data).range()
    lo, hi = observed(make_estimator("minmax", QuantSpec(8)), data).range()
    assert lo.item() < mean_lo.item() < mean_hi.item() < hi.item()


def histogram_width(estimator):
    histogram = estimator.histogram
    return (histogram.hi - histogram.lo) / histogram.bins


# Dense data (many samples per bin at the percentile): where samples are sparser than bins, sample
# quantiles and in-bin interpolation legitimately differ by up to the gap between two samples.
@pytest.mark.parametrize("count", [1, 4])
def test_percentile_per_tensor_matches_torch_quantile(count):
    data = batches(count=count, channels=1, rows=50000)
    estimator = observed(PercentileEstimator(QuantSpec(8), percentile=99.0), data)
    lo, hi = estimator.range()
    everything = torch.cat(data).reshape(-1).double()
    width = histogram_width(estimator).item()
    assert abs(lo.item() - torch.quantile(everything, 0.01).item()) <= width
    assert abs(hi.item() - torch.quantile(everything, 0.99).item()) <= width


def test_percentile_per_channel_matches_torch_quantile():
    data = batches(seed=1, rows=50000)
    estimator = observed(PercentileEstimator(QuantSpec(8, axis=1), percentile=99.0), data)
    lo, hi = estimator.range()
    everything = torch.cat(data).double()
    width = histogram_width(estimator)
    assert (lo - torch.quantile(everything, 0.01, dim=0).float()).abs().le(width).all()
    assert (hi - torch.quantile(everything, 0.99, dim=0).float()).abs().le(width).all()


def widened_histogram():
    """A histogram fed a narrow batch, then a wider one (forcing a re-bin), and the raw values."""
    generator = torch.Generator().manual_seed(2)
    first = torch.rand(1, 5000, generator=generator)
    second = torch.randn(1, 5000, generator=generator) * 2 - 1
    histogram = StreamingHistogram(bins=64)
    histogram.update(first)
    histogram.update(second)
    return histogram, torch.cat([first, second], 1)[0].double()


def test_histogram_widening_preserves_total_count():
    histogram, values = widened_histogram()
    assert histogram.counts.sum().item() == pytest.approx(values.numel(), rel=1e-9)
    assert histogram.lo.item() == values.min().item() and histogram.hi.item() == values.max().item()


def test_histogram_rebinning_keeps_mass_within_a_bin_width():
    histogram, values = widened_histogram()
    width = (histogram.hi - histogram.lo).item() / histogram.bins
    cumulative = torch.nn.functional.pad(histogram.counts[0].cumsum(0), (1, 0))
    for edge, mass_below in zip(histogram.edges()[0].tolist(), cumulative.tolist()):
        assert (values < edge - width).sum().item() - 1e-6 <= mass_below
        assert mass_below <= (values <= edge + width).sum().item() + 1e-6


def test_histogram_of_constant_nonzero_tensor():
    for scheme in ("percentile", "sqnr", "entropy"):
        estimator = observed(make_estimator(scheme, QuantSpec(8)), [torch.full((64,), 5.0)])
        lo, hi = estimator.range()
        assert torch.isfinite(lo).all() and torch.isfinite(hi).all()
        assert lo.item() <= 5.0 * (1 + 1e-5) and hi.item() >= 5.0 * (1 - 1e-5)


def raw_mse(x, spec, lo, hi):
    encoding = Encoding.from_range(spec, lo, hi)
    return ((x - dequantize(quantize(x, encoding), encoding)) ** 2).mean().item()


def heavy_tailed(seed, shift=0.0):
    """Laplace bulk plus a few far outliers (so clipping pays off), shuffled."""
    torch.manual_seed(seed)
    bulk = torch.distributions.Laplace(shift, 1.0).sample((20000,))
    outliers = torch.tensor([-25.0, 18.0, 30.0]) + shift
    return torch.cat([bulk, outliers])[torch.randperm(20003)]


@pytest.mark.parametrize("spec", [QuantSpec(4), QuantSpec(8, symmetric=True), QuantSpec(6),
                                  QuantSpec(4, symmetric=True, signed=False)])
def test_sqnr_per_tensor_within_two_percent_of_brute_force(spec):
    x = heavy_tailed(3).abs() if not spec.signed else heavy_tailed(3, shift=0.5)
    cand_lo, cand_hi = candidate_ranges(x.min().reshape(1), x.max().reshape(1), spec)
    best = min(raw_mse(x, spec, lo, hi) for lo, hi in zip(cand_lo[0], cand_hi[0]))
    lo, hi = observed(make_estimator("sqnr", spec), x.chunk(4)).range()
    assert raw_mse(x, spec, lo[0], hi[0]) <= 1.02 * best


def test_sqnr_per_channel_within_two_percent_of_brute_force():
    spec = QuantSpec(4, axis=0)
    x = torch.stack([heavy_tailed(4), heavy_tailed(5, shift=2.0) * 0.1])
    lo, hi = observed(make_estimator("sqnr", spec), [x[:, :10000], x[:, 10000:]]).range()
    cand_lo, cand_hi = candidate_ranges(x.amin(1), x.amax(1), spec)
    channel_spec = QuantSpec(4)
    for channel in range(2):
        best = min(raw_mse(x[channel], channel_spec, a, b)
                   for a, b in zip(cand_lo[channel], cand_hi[channel]))
        assert raw_mse(x[channel], channel_spec, lo[channel], hi[channel]) <= 1.02 * best


def kl_reference(counts, lo, hi, encoding_min, encoding_max, scale, offset, levels):
    """TensorRT's KL(P ‖ Q) for one candidate, by loops over bins; inf when excluded."""
    bins = len(counts)
    centers = [lo + (i + 0.5) * (hi - lo) / bins for i in range(bins)]
    inside = [i for i in range(bins) if encoding_min <= centers[i] <= encoding_max]
    if len(inside) < min(levels, bins):
        return math.inf
    p = [counts[i] for i in inside]
    p[0] += sum(counts[:inside[0]])
    p[-1] += sum(counts[inside[-1] + 1:])
    members = {}
    for position, i in enumerate(inside):
        level = min(max(round(centers[i] / scale) - offset, 0), levels - 1)
        members.setdefault(level, []).append(position)
    q = [0.0] * len(inside)
    for group in members.values():
        non_empty = [position for position in group if counts[inside[position]] > 0]
        for position in non_empty:
            q[position] = sum(counts[inside[position]] for position in group) / len(non_empty)
    p_total, q_total, divergence = sum(p), sum(q), 0.0
    for p_value, q_value in zip(p, q):
        if p_value > 0:
            if q_value == 0:
                return math.inf
            divergence += p_value / p_total * math.log((p_value / p_total) / (q_value / q_total))
    return divergence


def reference_entropy_range(histogram, spec):
    """(min, max) of the threshold candidate with the smallest reference KL, for row 0."""
    cand_lo, cand_hi = threshold_ranges(histogram.lo, histogram.hi, spec)
    best, best_range = math.inf, None
    for lo, hi in zip(cand_lo[0], cand_hi[0]):
        encoding = Encoding.from_range(spec, lo, hi)
        divergence = kl_reference(histogram.counts[0].tolist(), histogram.lo.item(),
                                  histogram.hi.item(), encoding.min.item(), encoding.max.item(),
                                  encoding.scale.item(), encoding.offset.item(), spec.levels)
        if divergence < best:
            best, best_range = divergence, (lo.item(), hi.item())
    return best_range


def hand_built_histogram():
    """64 bins over [-2, 6]: a peak near 0, a gap, a long sparse tail and one outlier bin."""
    counts = [0.0] * 64
    for i in range(64):
        counts[i] = round(900 * math.exp(-abs(i - 17) / 3)) if i < 40 else 3.0 * (i % 5 == 0)
    counts[20], counts[63] = 0.0, 7.0
    histogram = StreamingHistogram(bins=64)
    histogram.lo, histogram.hi = torch.tensor([-2.0]), torch.tensor([6.0])
    histogram.counts = torch.tensor([counts], dtype=torch.float64)
    return histogram


@pytest.mark.parametrize("spec", [QuantSpec(3), QuantSpec(3, symmetric=True), QuantSpec(4)])
def test_entropy_on_hand_built_histogram_matches_loop_reference(spec):
    histogram = hand_built_histogram()
    lo, hi = entropy_range(histogram, spec)
    expected_lo, expected_hi = reference_entropy_range(histogram, spec)
    assert (lo.item(), hi.item()) == pytest.approx((expected_lo, expected_hi), rel=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_entropy_estimator_matches_loop_reference(seed):
    spec = QuantSpec(4)
    estimator = observed(EntropyEstimator(spec, bins=256), [heavy_tailed(seed, shift=seed - 1.0)])
    lo, hi = estimator.range()
    expected_lo, expected_hi = reference_entropy_range(estimator.histogram, spec)
    assert (lo.item(), hi.item()) == pytest.approx((expected_lo, expected_hi), rel=1e-6)


def test_unknown_scheme_is_spec_error():
    with pytest.raises(SpecError, match="unknown calibration scheme"):
        make_estimator("mse", QuantSpec(8))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_range_before_any_batch_is_not_calibrated(scheme):
    with pytest.raises(NotCalibratedError):
        make_estimator(scheme, QuantSpec(8)).range()


@pytest.mark.parametrize("length", [100, 70000])
def test_row_aminmax_short_and_long_rows_match_the_definition(length):
    rows = torch.randn(4, length, generator=torch.Generator().manual_seed(5))
    lo, hi = row_aminmax(rows)
    assert lo.tolist() == [min(r) for r in rows.tolist()] and hi.tolist() == [max(r) for r in rows.tolist()]
