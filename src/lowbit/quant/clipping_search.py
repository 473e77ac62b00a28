"""Search of clipping ranges on histograms: minimum expected MSE (SQNR) and minimum KL divergence."""

from __future__ import annotations

import torch

from lowbit.quant.encoding import Encoding
from lowbit.quant.histogram import StreamingHistogram, prefix_sums, row_aminmax
from lowbit.quant.spec import QuantSpec

_STEPS_PER_SIDE = 24
_MAX_ELEMENTS_PER_CHUNK = 1 << 24


def sqnr_range(histogram: StreamingHistogram, spec: QuantSpec):
    """Per-row (min, max) whose grid has the lowest expected squared error on the histogram."""
    return _search_on(histogram.centers(), histogram.counts.to(torch.float32), histogram.lo, histogram.hi,
                      spec, _squared_error, candidate_ranges)


def sqnr_range_of_values(values: torch.Tensor, spec: QuantSpec):
    """Per-row (min, max) whose grid has the lowest squared error on the [rows, n] ``values`` themselves.
    Exact counterpart of :func:`sqnr_range` for tensors known in full (weights): candidates scored on every value."""
    values = values.detach().to(torch.float32)
    lo, hi = row_aminmax(values)
    return _search_on(values, torch.ones_like(values), lo, hi, spec, _squared_error, candidate_ranges)


def entropy_range(histogram: StreamingHistogram, spec: QuantSpec):
    """Per-row (min, max) whose quantized histogram is closest in KL divergence to the original.
    Candidates clip at a threshold t: [max(min, −t), min(max, t)], as TensorRT and onnxruntime do."""
    return _search_on(histogram.centers(), histogram.counts.to(torch.float32), histogram.lo, histogram.hi,
                      spec, _kl_divergence, threshold_ranges)


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


def _search_on(centers, counts, lo, hi, spec, cost, candidates):
    """Keep the candidate range of (``lo``, ``hi``) with the lowest ``cost`` on ``centers`` weighted by ``counts``.
    Returns the candidate ranges, not the grids' min/max: ``Encoding.from_range`` must rebuild the scored grid."""
    cand_lo, cand_hi = candidates(lo, hi, spec)
    rows, per_row = cand_lo.shape[0], cand_lo.shape[1] * centers.shape[1]
    chunk = max(1, _MAX_ELEMENTS_PER_CHUNK // per_row)
    best_lo, best_hi = [], []
    for start in range(0, rows, chunk):
        part = slice(start, start + chunk)
        encoding = Encoding.from_range(spec, cand_lo[part], cand_hi[part])
        costs = cost(centers[part], counts[part], encoding)
        choice = costs.argmin(1, keepdim=True)
        best_lo.append(cand_lo[part].gather(1, choice)[:, 0])
        best_hi.append(cand_hi[part].gather(1, choice)[:, 0])
    return torch.cat(best_lo), torch.cat(best_hi)


def _grid_index(centers, encoding):
    """[rows, K, bins] grid index each bin centre rounds to under each candidate encoding."""
    scale = encoding.scale[:, :, None]
    offset = encoding.offset[:, :, None].to(torch.float32)
    return (torch.round(centers[:, None, :] / scale) - offset).clamp_(encoding.spec.qmin, encoding.spec.qmax)


def _squared_error(centers, counts, encoding):
    """Expected squared quantization error per candidate, [rows, K]."""
    rebuilt = _grid_index(centers, encoding).add_(encoding.offset[:, :, None]).mul_(encoding.scale[:, :, None])
    error = rebuilt.sub_(centers[:, None, :]).square_()
    return torch.matmul(error, counts[:, :, None])[:, :, 0]


def _xlogx(x):
    """x · log x, 0 at 0."""
    return torch.xlogy(x, x)


def _kl_divergence(centers, counts, encoding):
    """KL(P ‖ Q) per candidate, [rows, K], as TensorRT defines it (clipped mass added to P's edge bins).
    Computed per grid level in closed form; candidates spanning fewer bins than levels are excluded (KL trivially 0)."""
    bins = centers.shape[1]
    counts = counts.to(torch.float64)
    first = torch.searchsorted(centers, encoding.min.contiguous()).clamp(max=bins - 1)
    last = (torch.searchsorted(centers, encoding.max.contiguous(), right=True) - 1).clamp(min=0)
    mass, nonzero, mass_log_mass = (prefix_sums(values) for values in
                                    (counts, (counts > 0).to(torch.float64), _xlogx(counts)))
    total = mass[:, -1:]
    below, above = mass.gather(1, first), total - mass.gather(1, last + 1)
    level_mass, level_nonzero = _level_sums(centers, counts, encoding, below, above, first, last, nonzero)
    kept = total - below - above
    edge_first, edge_last = counts.gather(1, first), counts.gather(1, last)
    p_log_p = (mass_log_mass.gather(1, last + 1) - mass_log_mass.gather(1, first)
               - _xlogx(edge_first) - _xlogx(edge_last) + _xlogx(edge_first + below) + _xlogx(edge_last + above))
    q = level_mass / (level_nonzero.clamp(min=1) * kept.clamp(min=1e-12)[:, :, None])
    p_log_q = (torch.xlogy(level_mass, q).sum(2) + _edge_log_q(below, edge_first, q, centers, encoding, first)
               + _edge_log_q(above, edge_last, q, centers, encoding, last))
    divergence = (p_log_p - p_log_q) / total - torch.log(total)
    too_narrow = last - first + 1 < min(encoding.spec.levels, bins)
    return divergence.to(torch.float32).masked_fill(too_narrow, float("inf"))


def _level_sums(centers, counts, encoding, below, above, first, last, nonzero):
    """[rows, K, levels] in-range mass and number of non-empty bins per grid level.
    Bins below (above) the candidate round to the lowest (highest) level, so their sums are taken back out of it."""
    rows, candidates = encoding.scale.shape
    levels = encoding.spec.levels
    group = _grid_index(centers, encoding).long()
    level_mass = counts.new_zeros(rows, candidates, levels)
    level_mass.scatter_add_(2, group, counts[:, None, :].expand(-1, candidates, -1))
    level_nonzero = torch.zeros_like(level_mass)
    level_nonzero.scatter_add_(2, group, (counts > 0).to(torch.float64)[:, None, :].expand(-1, candidates, -1))
    level_mass[:, :, 0] -= below
    level_mass[:, :, -1] -= above
    level_nonzero[:, :, 0] -= nonzero.gather(1, first)
    level_nonzero[:, :, -1] -= nonzero[:, -1:] - nonzero.gather(1, last + 1)
    return level_mass.clamp_(min=0), level_nonzero


def _edge_log_q(clipped, edge_count, q, centers, encoding, edge):
    """clipped · log q of the edge bin receiving the ``clipped`` mass, [rows, K]."""
    index = torch.round(centers.gather(1, edge) / encoding.scale) - encoding.offset.to(torch.float32)
    level = index.clamp(encoding.spec.qmin, encoding.spec.qmax).long()
    edge_q = q.gather(2, level[:, :, None])[:, :, 0].clamp(min=1e-12)
    edge_q = torch.where(edge_count > 0, edge_q, torch.full_like(edge_q, 1e-12))
    return clipped * torch.log(edge_q)
