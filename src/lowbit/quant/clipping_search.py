"""Search of clipping ranges on histograms: minimum expected MSE (SQNR) and minimum KL divergence."""

from __future__ import annotations

import torch

from lowbit.quant.encoding import Encoding
from lowbit.quant.histogram import StreamingHistogram
from lowbit.quant.spec import QuantSpec

_STEPS_PER_SIDE = 24
_MAX_ELEMENTS_PER_CHUNK = 1 << 24


def sqnr_range(histogram: StreamingHistogram, spec: QuantSpec):
    """Per-row (min, max) whose grid has the lowest expected squared error on the histogram."""
    return _search(histogram, spec, _squared_error, candidate_ranges)


def entropy_range(histogram: StreamingHistogram, spec: QuantSpec):
    """Per-row (min, max) whose quantized histogram is closest in KL divergence to the original.

    Candidates clip at a threshold t: [max(min, −t), min(max, t)], as TensorRT and onnxruntime do.
    """
    return _search(histogram, spec, _kl_divergence, threshold_ranges)


def threshold_ranges(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec):
    """[rows, K] candidate ranges clipped at thresholds t = fraction · max(|min|, |max|)."""
    fractions = torch.linspace(1.0 / (4 * _STEPS_PER_SIDE), 1.0, 4 * _STEPS_PER_SIDE, device=lo.device)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    bound = torch.maximum(-lo, hi)[:, None] * fractions
    return torch.maximum(lo[:, None], -bound), torch.minimum(hi[:, None], bound)


def candidate_ranges(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec):
    """[rows, K] candidate (min, max) pairs: shrunken versions of the observed range."""
    fractions = torch.linspace(1.0 / _STEPS_PER_SIDE, 1.0, _STEPS_PER_SIDE, device=lo.device)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if spec.symmetric and (spec.signed or bool((lo < 0).any())):
        bound = torch.maximum(-lo, hi)[:, None] * fractions
        return -bound, bound
    lo_grid = (lo[:, None] * fractions)[:, :, None].expand(-1, -1, _STEPS_PER_SIDE)
    hi_grid = (hi[:, None] * fractions)[:, None, :].expand(-1, _STEPS_PER_SIDE, -1)
    return lo_grid.reshape(lo.shape[0], -1), hi_grid.reshape(hi.shape[0], -1)


def _search(histogram, spec, cost, candidates):
    """Evaluate ``cost`` for every candidate and keep the cheapest, in row chunks to bound memory."""
    cand_lo, cand_hi = candidates(histogram.lo, histogram.hi, spec)
    rows, per_row = cand_lo.shape[0], cand_lo.shape[1] * histogram.bins
    chunk = max(1, _MAX_ELEMENTS_PER_CHUNK // per_row)
    centers, counts = histogram.centers(), histogram.counts.to(torch.float32)
    best_lo, best_hi = [], []
    for start in range(0, rows, chunk):
        part = slice(start, start + chunk)
        encoding = Encoding.from_range(spec, cand_lo[part], cand_hi[part])
        costs = cost(centers[part], counts[part], encoding)
        choice = costs.argmin(1, keepdim=True)
        best_lo.append(encoding.min.gather(1, choice)[:, 0])
        best_hi.append(encoding.max.gather(1, choice)[:, 0])
    return torch.cat(best_lo), torch.cat(best_hi)


def _grid_index(centers, encoding):
    """[rows, K, bins] grid index each bin centre rounds to under each candidate encoding."""
    scale = encoding.scale[:, :, None]
    offset = encoding.offset[:, :, None].to(torch.float32)
    return (torch.round(centers[:, None, :] / scale) - offset).clamp(0, encoding.spec.levels - 1)


def _squared_error(centers, counts, encoding):
    """Expected squared quantization error per candidate, [rows, K]."""
    grid = _grid_index(centers, encoding)
    rebuilt = (grid + encoding.offset[:, :, None]) * encoding.scale[:, :, None]
    return ((centers[:, None, :] - rebuilt) ** 2 * counts[:, None, :]).sum(2)


def _kl_divergence(centers, counts, encoding):
    """KL(P ‖ Q) per candidate, [rows, K], as TensorRT defines it.

    P: the bins whose centre lies inside the candidate, plus the clipped mass (bins whose centre
    lies outside) added to its edge bins; Q: the in-range counts (without the clipped mass) merged
    per grid level and spread over non-empty bins.

    Candidates spanning fewer bins than grid levels are excluded: their KL is trivially zero.
    """
    rows, candidates = encoding.scale.shape
    bins = centers.shape[1]
    below_range = centers[:, None, :] < encoding.min[:, :, None]
    above_range = centers[:, None, :] > encoding.max[:, :, None]
    inside = ~(below_range | above_range)
    first = below_range.sum(2, keepdim=True).clamp(max=bins - 1)
    last = (bins - 1 - above_range.sum(2, keepdim=True)).clamp(min=0)
    below = (counts[:, None, :] * below_range).sum(2, keepdim=True)
    above = (counts[:, None, :] * above_range).sum(2, keepdim=True)
    kept = counts[:, None, :] * inside
    reference = kept.scatter_add(2, first, below).scatter_add(2, last, above)
    group = _grid_index(centers, encoding).long()
    group_total = torch.zeros(rows, candidates, encoding.spec.levels, device=counts.device)
    group_total.scatter_add_(2, group, kept)
    group_nonzero = torch.zeros_like(group_total).scatter_add_(2, group, (kept > 0).float())
    spread = group_total.gather(2, group) / group_nonzero.gather(2, group).clamp(min=1)
    spread = torch.where(kept > 0, spread, torch.zeros_like(spread))
    p = reference / reference.sum(2, keepdim=True).clamp(min=1e-12)
    q = spread / spread.sum(2, keepdim=True).clamp(min=1e-12)
    terms = torch.where(p > 0, p * (torch.log(p.clamp(min=1e-12)) - torch.log(q.clamp(min=1e-12))),
                        torch.zeros_like(p))
    too_narrow = inside.sum(2) < min(encoding.spec.levels, bins)
    return terms.sum(2).masked_fill(too_narrow, float("inf"))
