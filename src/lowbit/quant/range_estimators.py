"""Range estimators: consume batches of a tensor, produce the (min, max) to quantize it with."""

from __future__ import annotations

import torch

from lowbit.errors import NotCalibratedError, SpecError
from lowbit.quant.clipping_search import entropy_range, sqnr_range, sqnr_range_of_values
from lowbit.quant.histogram import StreamingHistogram, row_aminmax
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
        lo, hi = row_aminmax(rows)
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


class WeightSqnrEstimator(RangeEstimator):
    """``sqnr`` for a tensor observed once and in full (a weight): the clipping range with the lowest
    squared error, scored on the values themselves where that is no dearer than a histogram (symmetric
    grids, whose 24 candidates are cheap to score, or rows no longer than ``bins``), else on a
    ``bins``-bin histogram of them, as :class:`SqnrEstimator` does."""

    def __init__(self, spec: QuantSpec, bins: int = 512):
        super().__init__(spec)
        self.bins = bins
        self.values: torch.Tensor | None = None

    def update(self, rows):
        rows = rows.to(torch.float32)
        self.values = rows if self.values is None else torch.cat([self.values, rows], dim=1)

    def range(self):
        self._require_data()
        if self.spec.symmetric or self.values.shape[1] <= self.bins:
            return sqnr_range_of_values(self.values, self.spec)
        histogram = StreamingHistogram(self.bins, max_counted=self.values.shape[1])
        histogram.update(self.values)
        return sqnr_range(histogram, self.spec)


def make_weight_estimator(scheme: str, spec: QuantSpec) -> RangeEstimator:
    """The range estimator for a weight (observed once, in full) calibrated with ``scheme``.

    ``minmax`` and ``percentile``/``entropy`` give the weight's min and max: weights have no outliers
    from data to clip, the percentile and KL criteria are statistics of activation distributions, and
    this is what TensorRT, onnxruntime's calibrators and NNCF do with weights. ``sqnr`` keeps its
    MSE-optimal search (it pays off at low bit widths), scored exactly on the weight values
    (:class:`WeightSqnrEstimator`).
    """
    if scheme not in SCHEMES:
        raise SpecError(f"unknown calibration scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return WeightSqnrEstimator(spec) if scheme == "sqnr" else MinMaxEstimator(spec)
