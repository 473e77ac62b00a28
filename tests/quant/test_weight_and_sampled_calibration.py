"""Weight estimators (full tensors, no streaming) and block-sampled histograms of long rows."""

import pytest
import torch

from lowbit.quant.clipping_search import candidate_ranges
from lowbit.quant.encoding import Encoding
from lowbit.quant.fake_quant import dequantize, quantize
from lowbit.quant.histogram import StreamingHistogram, row_aminmax
from lowbit.quant.range_estimators import MinMaxEstimator, WeightSqnrEstimator, make_weight_estimator
from lowbit.quant.spec import QuantSpec


def test_row_aminmax_single_and_many_rows():
    x = torch.randn(3, 1000)
    lo, hi = row_aminmax(x[:1])
    assert lo.shape == (1,) and lo.item() == x[0].min().item() and hi.item() == x[0].max().item()
    lo, hi = row_aminmax(x)
    assert torch.equal(lo, x.amin(1)) and torch.equal(hi, x.amax(1))


def test_sampled_histogram_keeps_exact_range_and_total_and_shape():
    torch.manual_seed(0)
    x = torch.randn(1, 1 << 18)
    full, sampled = StreamingHistogram(64), StreamingHistogram(64, max_counted=1 << 15)
    for histogram in (full, sampled):
        histogram.update(x)
        histogram.update(x * 1.5)
    assert torch.equal(full.lo, sampled.lo) and torch.equal(full.hi, sampled.hi)
    assert sampled.counts.sum().item() == pytest.approx(2 * x.numel(), rel=1e-9)
    shares = sampled.counts / sampled.counts.sum(), full.counts / full.counts.sum()
    assert (shares[0] - shares[1]).abs().max().item() < 0.01


@pytest.mark.parametrize("scheme", ["minmax", "percentile", "entropy"])
def test_weights_use_min_max_except_with_sqnr(scheme):
    spec = QuantSpec(8, symmetric=True, axis=0)
    weight = torch.randn(4, 3, 3, 3)
    estimator = make_weight_estimator(scheme, spec)
    assert isinstance(estimator, MinMaxEstimator)
    estimator.observe(weight)
    lo, hi = estimator.range()
    assert torch.equal(lo, weight.reshape(4, -1).amin(1)) and torch.equal(hi, weight.reshape(4, -1).amax(1))


@pytest.mark.parametrize("spec", [QuantSpec(8, symmetric=True, axis=0), QuantSpec(4, axis=0)])
def test_weight_sqnr_is_the_best_candidate_on_the_values(spec):
    torch.manual_seed(1)
    weight = torch.distributions.Laplace(0.0, 1.0).sample((5, 300))
    weight[0, 0], weight[3, 5] = 20.0, -15.0
    estimator = make_weight_estimator("sqnr", spec)
    assert isinstance(estimator, WeightSqnrEstimator)
    estimator.observe(weight)
    lo, hi = estimator.range()
    cand_lo, cand_hi = candidate_ranges(weight.amin(1), weight.amax(1), spec)

    def mse(row, a, b):
        encoding = Encoding.from_range(QuantSpec(spec.bits, symmetric=spec.symmetric), a, b)
        return ((row - dequantize(quantize(row, encoding), encoding)) ** 2).mean().item()

    for r in range(weight.shape[0]):
        best = min(mse(weight[r], a, b) for a, b in zip(cand_lo[r], cand_hi[r]))
        assert mse(weight[r], lo[r], hi[r]) <= best * 1.02
