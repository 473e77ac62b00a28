"""Range estimators: consume batches of a tensor, produce the (min, max) to quantize it with."""

from __future__ import annotations

import torch

from lowbit.errors import NotCalibratedError, SpecError
from lowbit.quant.clipping_search import entropy_range, sqnr_range
from lowbit.quant.histogram import StreamingHistogram
from lowbit.quant.layout import as_rows
from lowbit.quant.spec import QuantSpec

SCHEMES = ("minmax", "percentile", "sqnr", "entropy")


class RangeEstimator:
    """Streams [rows, n] views of a tensor; ``range()`` gives per-row (min, max)."""

    def __init__(self, spec: QuantSpec):
        self.spec = spec
        self.batches = 0

    def observe(self, x: torch.Tensor) -> None:
        """Add one batch of the tensor."""
        self.update(as_rows(x.detach(), self.spec))
        self.batches += 1

    def update(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _require_data(self) -> None:
        if self.batches == 0:
            raise NotCalibratedError("no batch reached this quantizer during calibration")


class MinMaxEstimator(RangeEstimator):
    """Running minimum and maximum."""

    def __init__(self, spec: QuantSpec):
        super().__init__(spec)
        self.lo = self.hi = None

    def update(self, rows):
        lo, hi = torch.aminmax(rows, dim=1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def range(self):
        self._require_data()
        return self.lo, self.hi


class HistogramEstimator(RangeEstimator):
    """Base for estimators that search a clipping range on a streaming histogram."""

    def __init__(self, spec: QuantSpec, bins: int = 2048):
        super().__init__(spec)
        self.histogram = StreamingHistogram(bins if spec.axis is None else min(bins, 512))

    def update(self, rows):
        self.histogram.update(rows)


class PercentileEstimator(HistogramEstimator):
    """Clips at the ``percentile``-th and (100 − percentile)-th percentiles."""

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, bins: int = 2048):
        if not 50.0 < percentile <= 100.0:
            raise SpecError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(spec, bins)
        self.percentile = percentile

    def range(self):
        self._require_data()
        counts = self.histogram.counts
        cumulative = torch.nn.functional.pad(counts.cumsum(1), (1, 0))
        total = cumulative[:, -1:]
        tail = (100.0 - self.percentile) / 100.0
        targets = torch.cat([total * tail, total * (1.0 - tail)], dim=1).contiguous()
        position = torch.searchsorted(cumulative.contiguous(), targets).clamp(1, counts.shape[1])
        below, above = cumulative.gather(1, position - 1), cumulative.gather(1, position)
        fraction = ((targets - below) / (above - below).clamp(min=1e-12)).to(torch.float32)
        edges = self.histogram.edges()
        width = edges[:, 1:2] - edges[:, 0:1]
        values = edges.gather(1, position - 1) + fraction * width
        return values[:, 0], values[:, 1]


class SqnrEstimator(HistogramEstimator):
    """Clipping range minimising the expected quantization MSE on the histogram."""

    def range(self):
        self._require_data()
        return sqnr_range(self.histogram, self.spec)


class EntropyEstimator(HistogramEstimator):
    """Clipping range minimising KL(histogram ‖ its quantized version) (TensorRT-style)."""

    def range(self):
        self._require_data()
        return entropy_range(self.histogram, self.spec)


def make_estimator(scheme: str, spec: QuantSpec) -> RangeEstimator:
    """The range estimator called ``scheme`` for tensors quantized with ``spec``."""
    estimators = {"minmax": MinMaxEstimator, "percentile": PercentileEstimator,
                  "sqnr": SqnrEstimator, "entropy": EntropyEstimator}
    if scheme not in estimators:
        raise SpecError(f"unknown calibration scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return estimators[scheme](spec)
