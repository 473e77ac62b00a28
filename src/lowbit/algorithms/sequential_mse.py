"""Sequential MSE (AIMET's recipe), on tensors: per layer, grid-search the weight range minimising the output error on
quantized-input rows; candidates ``[c · min, c · max]``, ``c = 1, (N−1)/N, …, 1/N`` (per channel if the spec is)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from lowbit.errors import SpecError
from lowbit.quant.encoding import Encoding
from lowbit.quant.fake_quant import fake_quantize
from lowbit.quant.layout import as_rows
from lowbit.quant.spec import QuantSpec

LOSSES = ("mse", "l1", "sqnr")
_EPSILON = 1e-10

Rows = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
LayerOutput = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class OutputError:
    """Sums over rows, per output channel (float64), of the squared error, the absolute error and the
    squared target (``sums``, ``[3, out]``): enough for every loss in :data:`LOSSES`."""

    def __init__(self, sums: torch.Tensor | None = None, rows: int = 0):
        self.sums = sums
        self.rows = rows

    def add(self, output: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate one chunk of rows ``[rows, out]``."""
        error, target = (output - target).to(torch.float64), target.to(torch.float64)
        sums = torch.stack([error.square().sum(dim=0), error.abs().sum(dim=0), target.square().sum(dim=0)])
        self.sums = sums if self.sums is None else self.sums + sums
        self.rows += output.shape[0]

    def loss(self, name: str) -> torch.Tensor:
        """Per-channel loss ``[out]``: mean squared or absolute error over rows, or the negative SQNR
        in dB (AIMET's ``neg_sqnr``: 10 · log10(noise / signal))."""
        squared, absolute, signal = self.sums / self.rows
        if name == "mse":
            return squared
        if name == "l1":
            return absolute
        return 10 * torch.log10((squared + _EPSILON) / (signal + _EPSILON))

    @property
    def mse(self) -> float:
        """Mean squared error over every row and channel."""
        return float(self.loss("mse").mean())


@dataclass(frozen=True)
class SequentialMSEResult:
    """What ``sequential_mse`` chose: the optimised layers (call order) with their output MSE on the sampled rows before
    (the sim's encodings) and after, the skipped layers with the reason, and the seconds it took."""

    optimized: tuple[str, ...]
    mse_before: tuple[float, ...]
    mse_after: tuple[float, ...]
    skipped: dict[str, str]
    seconds: float

    @property
    def mean_mse_change(self) -> float:
        """Mean over the optimised layers of after / before − 1 (−0.35: 35 % lower output MSE)."""
        ratios = [after / before - 1 for before, after in zip(self.mse_before, self.mse_after) if before > 0]
        return sum(ratios) / len(ratios) if ratios else 0.0

    def __str__(self) -> str:
        skipped = "".join(f", skipped {name} ({reason})" for name, reason in self.skipped.items())
        return (f"sequential mse: {len(self.optimized)} layers, {self.seconds:.1f} s, "
                f"mean output MSE {self.mean_mse_change:+.0%}{skipped}")


@dataclass(frozen=True)
class WeightSearch:
    """The chosen weight encoding and the layer's output error with it."""

    encoding: Encoding
    error: OutputError


def check_options(loss: str, num_candidates, max_rows) -> None:
    """SpecError for an unknown ``loss`` or a ``num_candidates`` / ``max_rows`` that is not a positive integer."""
    if loss not in LOSSES:
        raise SpecError(f"unknown sequential MSE loss {loss!r}; choose one of {', '.join(LOSSES)}")
    for label, value in (("num_candidates", num_candidates), ("max_rows", max_rows)):
        if not isinstance(value, int) or value < 1:
            raise SpecError(f"{label} must be a positive integer, got {value!r}")


def output_error(quantized_weight: torch.Tensor, rows: Rows, layer_output: LayerOutput) -> OutputError:
    """The error of ``layer_output(inputs, quantized_weight)`` against the targets, over every chunk of
    ``rows()`` (pairs of input rows and target rows ``[rows, out]``)."""
    error = OutputError()
    for inputs, targets in rows():
        error.add(layer_output(inputs, quantized_weight), targets)
    return error


def candidate_ranges(weight: torch.Tensor, spec: QuantSpec, num_candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(minima, maxima) of the candidates, ``[num_candidates]`` (per-tensor) or ``[num_candidates,
    channels]`` (per-channel): the weight's range times ``c = 1, (N−1)/N, …, 1/N``."""
    channels = as_rows(weight.detach().float(), spec)
    low, high = channels.amin(dim=1), channels.amax(dim=1)
    if spec.axis is None:
        low, high = low.reshape(()), high.reshape(())
    fractions = torch.arange(num_candidates, 0, -1, device=weight.device) / num_candidates
    fractions = fractions.reshape((-1,) + (1,) * low.dim())
    return fractions * low, fractions * high


@torch.no_grad()
def search_weight_encoding(weight: torch.Tensor, spec: QuantSpec, rows: Rows, layer_output: LayerOutput,
                           num_candidates: int = 20, loss: str = "mse") -> WeightSearch:
    """The candidate encoding of ``weight`` (``[out, ...]``, per-tensor or per-channel on axis 0) whose
    fake-quantized weight gives the lowest ``loss`` of ``layer_output`` over ``rows()``."""
    lows, highs = candidate_ranges(weight, spec, num_candidates)
    errors = [output_error(fake_quantize(weight, Encoding.from_range(spec, low, high)), rows, layer_output)
              for low, high in zip(lows, highs)]
    losses = torch.stack([error.loss(loss) for error in errors])  # [candidates, out]
    if spec.axis is None:
        best = losses.mean(dim=1).argmin()
        return WeightSearch(Encoding.from_range(spec, lows[best], highs[best]), errors[best])
    best = losses.argmin(dim=0)
    channels = torch.arange(losses.shape[1], device=best.device)
    sums = torch.stack([error.sums for error in errors])[best, :, channels].T  # [3, out]
    encoding = Encoding.from_range(spec, lows[best, channels], highs[best, channels])
    return WeightSearch(encoding, OutputError(sums, errors[0].rows))
