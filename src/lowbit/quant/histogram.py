"""Streaming per-row histograms that widen their range as new batches arrive."""

from __future__ import annotations

import torch

_MIN_WIDTH = 1e-12
_MIN_RELATIVE_WIDTH = 1e-6
_MAX_ELEMENTS_PER_CHUNK = 1 << 24


class StreamingHistogram:
    """One histogram of ``bins`` bins per row, range widened (and counts re-binned) as data grows."""

    def __init__(self, bins: int = 2048):
        self.bins = bins
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def update(self, rows: torch.Tensor) -> None:
        """Add a [rows, n] batch of values."""
        rows = rows.detach().to(torch.float32)
        batch_lo, batch_hi = torch.aminmax(rows, dim=1)
        if self.counts is None:
            min_width = (batch_lo.abs() * _MIN_RELATIVE_WIDTH).clamp(min=_MIN_WIDTH)
            self.lo, self.hi = batch_lo, torch.maximum(batch_hi, batch_lo + min_width)
            self.counts = torch.zeros(rows.shape[0], self.bins, dtype=torch.float64, device=rows.device)
        elif bool((batch_lo < self.lo).any() or (batch_hi > self.hi).any()):
            self._rebin(torch.minimum(self.lo, batch_lo), torch.maximum(self.hi, batch_hi))
        self._add(rows)

    def edges(self) -> torch.Tensor:
        """Bin edges, [rows, bins + 1]."""
        steps = torch.arange(self.bins + 1, device=self.lo.device, dtype=torch.float32) / self.bins
        return self.lo[:, None] + (self.hi - self.lo)[:, None] * steps

    def centers(self) -> torch.Tensor:
        """Bin centres, [rows, bins]."""
        edges = self.edges()
        return (edges[:, 1:] + edges[:, :-1]) / 2

    def _add(self, rows: torch.Tensor) -> None:
        if rows.shape[0] == 1:
            counts = torch.histc(rows, self.bins, min=self.lo.item(), max=self.hi.item())
            self.counts += counts[None].to(torch.float64)
            return
        chunk = max(1, _MAX_ELEMENTS_PER_CHUNK // rows.shape[1])
        for start in range(0, rows.shape[0], chunk):
            self._add_rows(rows[start:start + chunk], slice(start, start + chunk))

    def _add_rows(self, rows: torch.Tensor, part: slice) -> None:
        """Add [r, n] ``rows`` to the counts of rows ``part``, by one bincount over all of them."""
        lo, width = self.lo[part, None], (self.hi - self.lo)[part, None]
        index = ((rows - lo) / width * self.bins).floor_().clamp_(0, self.bins - 1).long()
        index += torch.arange(rows.shape[0], device=rows.device)[:, None] * self.bins
        flat = torch.bincount(index.reshape(-1), minlength=rows.shape[0] * self.bins)
        self.counts[part] += flat.reshape(rows.shape[0], self.bins).to(torch.float64)

    def _rebin(self, new_lo: torch.Tensor, new_hi: torch.Tensor) -> None:
        """Re-distribute counts onto a wider range, assuming values uniform within a bin."""
        cumulative = torch.nn.functional.pad(self.counts.cumsum(1), (1, 0))
        steps = torch.arange(self.bins + 1, device=new_lo.device, dtype=torch.float32) / self.bins
        new_edges = new_lo[:, None] + (new_hi - new_lo)[:, None] * steps
        position = ((new_edges - self.lo[:, None]) / (self.hi - self.lo)[:, None] * self.bins)
        position = position.clamp(0, self.bins).to(torch.float64)
        left = position.floor().clamp(max=self.bins - 1).long()
        fraction = position - left
        below = cumulative.gather(1, left)
        above = cumulative.gather(1, left + 1)
        self.counts = (below + fraction * (above - below)).diff(dim=1).clamp(min=0)
        self.lo, self.hi = new_lo, new_hi
