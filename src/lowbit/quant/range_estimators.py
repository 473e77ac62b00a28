"""Range estimators: consume batches of a tensor, produce the (min, max) to quantize it with."""

from __future__ import annotations

import torch

from lowbit.errors import NotCalibratedError, SpecError
from lowbit.quant.clipping_search import entropy_range, sqnr_range, sqnr_range_of_values
from lowbit.quant.histogram import StreamingHistogram, prefix_sums, row_aminmax
from lowbit.quant.layout import as_rows, in_memory_order
from lowbit.quant.spec import QuantSpec

SCHEMES = ("minmax", "mean_minmax", "percentile", "sqnr", "entropy")


class RangeEstimator:
    """Streams [rows, n] views of a tensor; ``range()`` gives per-row (min, max).
    With ``takes_extremes`` it can instead be fed each sample's minima and maxima (``observe_extremes``)."""

    takes_extremes = False

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
        """Per-row (min, max) to quantize with; NotCalibratedError before any batch."""
        if self.batches == 0:
            raise NotCalibratedError("no batch reached this quantizer during calibration")
        return self._range()

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def merge(self, other: "RangeEstimator") -> None:
        """Take in what ``other`` (same scheme and spec) observed, as if this estimator had seen it too:
        how statistics from several processes combine."""
        if type(other) is not type(self) or other.spec != self.spec:
            raise SpecError(f"cannot merge a {type(other).__name__} for {other.spec} into a "
                            f"{type(self).__name__} for {self.spec}")
        if other.batches:
            self._merge(other)
        self.batches += other.batches

    def _merge(self, other) -> None:
        raise NotImplementedError


class MinMaxEstimator(RangeEstimator):
    """Running minimum and maximum."""

    takes_extremes = True

    def __init__(self, spec: QuantSpec):
        super().__init__(spec)
        self.lo = self.hi = None

    def update(self, rows):
        self._widen(*row_aminmax(rows))

    def observe_extremes(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """One batch given as [rows, samples] per-sample minima and maxima."""
        self._widen(lo.amin(1), hi.amax(1))
        self.batches += 1

    def _widen(self, lo, hi):
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def _merge(self, other) -> None:
        self._widen(other.lo, other.hi)

    def _range(self):
        return self.lo, self.hi


class MeanMinMaxEstimator(RangeEstimator):
    """Mean over samples (first dimension) of each sample's minimum and maximum: one outlier image
    widens the range by 1/N of its excess instead of setting it (NNCF's activation default)."""

    takes_extremes = True

    def __init__(self, spec: QuantSpec):
        super().__init__(spec)
        self.lo_sum = self.hi_sum = None
        self.samples = 0

    def observe(self, x):
        self.observe_extremes(*self._per_sample_aminmax(x.detach()))

    def observe_extremes(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """One batch given as [rows, samples] per-sample minima and maxima."""
        self.lo_sum = lo.sum(1) if self.lo_sum is None else self.lo_sum + lo.sum(1)
        self.hi_sum = hi.sum(1) if self.hi_sum is None else self.hi_sum + hi.sum(1)
        self.samples += lo.shape[1]
        self.batches += 1

    def _merge(self, other) -> None:
        self.lo_sum = other.lo_sum.clone() if self.lo_sum is None else self.lo_sum + other.lo_sum
        self.hi_sum = other.hi_sum.clone() if self.hi_sum is None else self.hi_sum + other.hi_sum
        self.samples += other.samples

    def _per_sample_aminmax(self, x):
        """[rows, samples] minima and maxima; the whole batch is one sample where its first dimension
        is the encoding's channel axis, the spec is blocked, or the tensor has no batch dimension."""
        per_channel = self.spec.axis is not None and self.spec.block_size is None
        if x.dim() < 2 or self.spec.block_size is not None or (per_channel and self.spec.axis % x.dim() == 0):
            lo, hi = row_aminmax(as_rows(x, self.spec))
            return lo[:, None], hi[:, None]
        if not per_channel:
            lo, hi = row_aminmax(in_memory_order(x).reshape(x.shape[0], -1))
            return lo[None], hi[None]
        rows = x.movedim(self.spec.axis % x.dim(), 0)
        channels, samples = rows.shape[0], rows.shape[1]
        lo, hi = row_aminmax(rows.reshape(channels * samples, -1))
        return lo.reshape(channels, samples), hi.reshape(channels, samples)

    def _range(self):
        return self.lo_sum / self.samples, self.hi_sum / self.samples


class HistogramEstimator(RangeEstimator):
    """Base for estimators that search a clipping range on a streaming histogram."""

    def __init__(self, spec: QuantSpec, bins: int = 2048):
        super().__init__(spec)
        self.histogram = StreamingHistogram(bins if spec.axis is None else min(bins, 512))

    def update(self, rows):
        self.histogram.update(rows)

    def _merge(self, other) -> None:
        self.histogram.merge(other.histogram)


class PercentileEstimator(HistogramEstimator):
    """Clips at the ``percentile``-th and (100 − percentile)-th percentiles."""

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, bins: int = 2048):
        if not 50.0 < percentile <= 100.0:
            raise SpecError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(spec, bins)
        self.percentile = percentile

    def _range(self):
        counts = self.histogram.counts
        cumulative = prefix_sums(counts)
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

    def _range(self):
        return sqnr_range(self.histogram, self.spec)


class EntropyEstimator(HistogramEstimator):
    """Clipping range minimising KL(histogram ‖ its quantized version) (TensorRT-style)."""

    def _range(self):
        return entropy_range(self.histogram, self.spec)


def model_output_scheme(scheme: str) -> str:
    """The scheme for a tensor the model returns: ``mean_minmax`` keeps the full range there, since
    each sample's extreme (the winning logit) is the prediction and averaging would clip it."""
    return "minmax" if scheme == "mean_minmax" else scheme


def make_estimator(scheme: str, spec: QuantSpec) -> RangeEstimator:
    """The range estimator called ``scheme`` for tensors quantized with ``spec``."""
    estimators = {"minmax": MinMaxEstimator, "mean_minmax": MeanMinMaxEstimator, "percentile": PercentileEstimator,
                  "sqnr": SqnrEstimator, "entropy": EntropyEstimator}
    if scheme not in estimators:
        raise SpecError(f"unknown calibration scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return estimators[scheme](spec)


class WeightSqnrEstimator(RangeEstimator):
    """``sqnr`` for a weight (observed once, in full): the clipping range with the lowest squared error, scored on the
    values where no dearer (symmetric grids, rows ≤ ``bins``), else on a ``bins``-bin histogram."""

    def __init__(self, spec: QuantSpec, bins: int = 512):
        super().__init__(spec)
        self.bins = bins
        self.values: torch.Tensor | None = None

    def update(self, rows):
        rows = rows.to(torch.float32)
        self.values = rows if self.values is None else torch.cat([self.values, rows], dim=1)

    def _merge(self, other) -> None:
        self.update(other.values)

    def _range(self):
        if self.spec.symmetric or self.values.shape[1] <= self.bins:
            return sqnr_range_of_values(self.values, self.spec)
        histogram = StreamingHistogram(self.bins, max_counted=self.values.shape[1])
        histogram.update(self.values)
        return sqnr_range(histogram, self.spec)


def make_weight_estimator(scheme: str, spec: QuantSpec) -> RangeEstimator:
    """The range estimator for a weight (observed once, in full) calibrated with ``scheme``.
    Only ``sqnr`` searches (exactly, on the values); the others give min/max, as TensorRT, onnxruntime and NNCF do."""
    if scheme not in SCHEMES:
        raise SpecError(f"unknown calibration scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    return WeightSqnrEstimator(spec) if scheme == "sqnr" else MinMaxEstimator(spec)
