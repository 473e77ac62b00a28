"""Streaming per-row histograms that widen their range as new batches arrive."""

from __future__ import annotations

import torch

_MIN_WIDTH = 1e-12
_MIN_RELATIVE_WIDTH = 1e-6
_MAX_ELEMENTS_PER_CHUNK = 1 << 24
# Rows longer than this are histogrammed on a sample (blocks of _SAMPLE_BLOCK contiguous values, every
# k-th block, starting at a block that moves with each batch); min and max always use every value.
_MAX_COUNTED_PER_ROW = 1 << 20
_SAMPLE_BLOCK = 4096


LONG_ROW = 1 << 16
"""Row length from which two passes (amin, amax) beat torch's fused ``aminmax(dim=1)`` (activation rows,
one per sample), while short rows (weights) are faster fused."""


def row_aminmax(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (min, max) of [rows, n] ``rows``; a single row is reduced as a whole tensor, which
    torch does several times faster than ``aminmax(dim=1)`` on a [1, n] view; long rows in two passes."""
    if rows.shape[0] == 1:
        lo, hi = torch.aminmax(rows)
        return lo.reshape(1), hi.reshape(1)
    if rows.shape[1] >= LONG_ROW:
        return rows.amin(1), rows.amax(1)
    return torch.aminmax(rows, dim=1)


def prefix_sums(values: torch.Tensor) -> torch.Tensor:
    """[rows, bins + 1] cumulative sums of [rows, bins] ``values``, starting at 0."""
    return torch.nn.functional.pad(values.cumsum(1), (1, 0))


class StreamingHistogram:
    """One histogram of ``bins`` bins per row over the exact min/max seen (``lo``, ``hi``), widened as data grows.
    Rows over ``max_counted`` values a batch are counted on a systematic sample, weighted so counts sum to the total."""

    def __init__(self, bins: int = 2048, max_counted: int = _MAX_COUNTED_PER_ROW):
        self.bins = bins
        self.max_counted = max_counted
        self.updates = 0
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def update(self, rows: torch.Tensor) -> None:
        """Add a [rows, n] batch of values."""
        rows = rows.detach().to(torch.float32)
        batch_lo, batch_hi = row_aminmax(rows)
        if self.counts is None:
            min_width = (batch_lo.abs() * _MIN_RELATIVE_WIDTH).clamp(min=_MIN_WIDTH)
            self.lo, self.hi = batch_lo, torch.maximum(batch_hi, batch_lo + min_width)
            self.counts = torch.zeros(rows.shape[0], self.bins, dtype=torch.float64, device=rows.device)
        elif bool((batch_lo < self.lo).any() or (batch_hi > self.hi).any()):
            self._rebin(torch.minimum(self.lo, batch_lo), torch.maximum(self.hi, batch_hi))
        rows, weight = self._sample(rows)
        self._add(rows, weight)
        self.updates += 1

    def merge(self, other: "StreamingHistogram") -> None:
        """Add ``other``'s counts (same bins), both re-binned onto the range covering the two."""
        if other.counts is None:
            return
        if self.counts is None:
            self.lo, self.hi, self.counts = other.lo.clone(), other.hi.clone(), other.counts.clone()
        else:
            lo, hi = torch.minimum(self.lo, other.lo), torch.maximum(self.hi, other.hi)
            if not (torch.equal(lo, self.lo) and torch.equal(hi, self.hi)):
                self._rebin(lo, hi)
            incoming = StreamingHistogram(self.bins)
            incoming.lo, incoming.hi, incoming.counts = other.lo, other.hi, other.counts
            if not (torch.equal(lo, other.lo) and torch.equal(hi, other.hi)):
                incoming._rebin(lo, hi)
            self.counts = self.counts + incoming.counts
        self.updates += other.updates

    def _sample(self, rows: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The values to count (all of them, or a block sample of long rows) and the weight of each."""
        n = rows.shape[1]
        blocks, step = n // _SAMPLE_BLOCK, -(-n // max(1, self.max_counted))
        if n <= self.max_counted or blocks < step:
            return rows, 1.0
        start = self.updates % step
        sample = rows[:, :blocks * _SAMPLE_BLOCK].reshape(rows.shape[0], blocks, _SAMPLE_BLOCK)[:, start::step]
        sample = sample.reshape(rows.shape[0], -1)
        return sample, n / sample.shape[1]

    def edges(self) -> torch.Tensor:
        """Bin edges, [rows, bins + 1]."""
        steps = torch.arange(self.bins + 1, device=self.lo.device, dtype=torch.float32) / self.bins
        return self.lo[:, None] + (self.hi - self.lo)[:, None] * steps

    def centers(self) -> torch.Tensor:
        """Bin centres, [rows, bins]."""
        edges = self.edges()
        return (edges[:, 1:] + edges[:, :-1]) / 2

    def _add(self, rows: torch.Tensor, weight: float = 1.0) -> None:
        if rows.shape[0] == 1:
            counts = torch.histc(rows, self.bins, min=self.lo.item(), max=self.hi.item())
            self.counts += counts[None].to(torch.float64) * weight
            return
        chunk = max(1, _MAX_ELEMENTS_PER_CHUNK // rows.shape[1])
        for start in range(0, rows.shape[0], chunk):
            self._add_rows(rows[start:start + chunk], slice(start, start + chunk), weight)

    def _add_rows(self, rows: torch.Tensor, part: slice, weight: float = 1.0) -> None:
        """Add [r, n] ``rows`` to the counts of rows ``part``, by one bincount over all of them."""
        lo, width = self.lo[part, None], (self.hi - self.lo)[part, None]
        index = ((rows - lo) / width * self.bins).floor_().clamp_(0, self.bins - 1).long()
        index += torch.arange(rows.shape[0], device=rows.device)[:, None] * self.bins
        flat = torch.bincount(index.reshape(-1), minlength=rows.shape[0] * self.bins)
        self.counts[part] += flat.reshape(rows.shape[0], self.bins).to(torch.float64) * weight

    def _rebin(self, new_lo: torch.Tensor, new_hi: torch.Tensor) -> None:
        """Re-distribute counts onto a wider range, assuming values uniform within a bin."""
        cumulative = prefix_sums(self.counts)
        steps = torch.arange(self.bins + 1, device=new_lo.device, dtype=torch.float32) / self.bins
        new_edges = new_lo[:, None] + (new_hi - new_lo)[:, None] * steps
        position = ((new_edges - self.lo[:, None]) / (self.hi - self.lo)[:, None] * self.bins)
        position = position.clamp(0, self.bins).to(torch.float64)
        left = position.floor().clamp(max=self.bins - 1).long()
        fraction = position - left
        below, above = cumulative.gather(1, left), cumulative.gather(1, left + 1)
        self.counts = (below + fraction * (above - below)).diff(dim=1).clamp(min=0)
        self.lo, self.hi = new_lo, new_hi
