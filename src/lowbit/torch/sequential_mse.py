"""Sequential MSE on a QuantSim: layer by layer in call order, rows of the sim's quantized inputs and
the float model's outputs go to ``lowbit.algorithms.sequential_mse``; the chosen weight encodings are
frozen into the sim's weight quantizers."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lowbit.algorithms.sequential_mse import LOSSES, output_error, search_weight_encoding
from lowbit.errors import SpecError
from lowbit.quant.fake_quant import fake_quantize
from lowbit.torch.layer_inputs import layer_inputs_for, weight_skip_reason
from lowbit.torch.layer_rows import layer_groups, rows_forward
from lowbit.torch.row_cache import RowCache
from lowbit.torch.weight_quantized import WeightQuantized

_CHUNK_BYTES = 1 << 26


@dataclass(frozen=True)
class SequentialMSEResult:
    """What ``sequential_mse`` chose: the optimised layers (module names in ``sim.model``, in call
    order) with their output MSE on the sampled rows before (the sim's encodings) and after, the
    skipped layers with the reason, and the seconds it took."""

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


def sequential_mse(sim, data, num_candidates: int = 20, loss: str = "mse", num_batches: int | None = None,
                   transform=None, max_rows: int = 4096, memory_limit: int = 1 << 30) -> SequentialMSEResult:
    """Sequential MSE (AIMET's recipe), in place on ``sim``'s weight encodings.

    Layer by layer, in the order the first batch calls them, up to ``max_rows`` output positions
    are sampled evenly over the batches: the layer's input as the sim computes it (quantized, with
    the encodings already chosen for earlier layers) and its output in the float model. Each of
    ``num_candidates`` weight ranges ``[c · min, c · max]`` (c = 1, (N−1)/N, …, 1/N, per output
    channel) is scored by the ``loss`` ("mse", "l1" or "sqnr") of the layer's output on those rows;
    each channel's best one is frozen (``Quantizer.freeze``), so ``sim.calibrate`` keeps it and
    export writes it. Rows beyond ``memory_limit`` bytes are kept on disk.

    Conv1d/Conv2d/Linear layers with per-tensor or per-output-channel weight encodings are searched;
    the others (and layers the first batch does not reach) are skipped and named in the result.
    Activation encodings are left as calibrated: ``sim.calibrate(data)`` afterwards refits them to
    the new weights.

    Raises ``SpecError`` for an unknown loss or ``num_candidates`` or ``max_rows`` < 1,
    ``NotCalibratedError`` on an uncalibrated sim and ``DataError`` on empty data or fewer batches
    than ``num_batches``.
    """
    if loss not in LOSSES:
        raise SpecError(f"unknown sequential MSE loss {loss!r}; choose one of {', '.join(LOSSES)}")
    for label, value in (("num_candidates", num_candidates), ("max_rows", max_rows)):
        if not isinstance(value, int) or value < 1:
            raise SpecError(f"{label} must be a positive integer, got {value!r}")
    start = time.perf_counter()
    layer_inputs = layer_inputs_for(sim, data, transform, num_batches, "sequential MSE")
    order = layer_inputs.layer_order()
    wrappers = {name: m for name, m in sim.model.named_modules() if isinstance(m, WeightQuantized)}
    reasons = {name: _skip_reason(wrapper, name in order) for name, wrapper in wrappers.items()}
    generator = torch.Generator().manual_seed(0)
    optimized, before, after = [], [], []
    for name in order:
        if reasons[name] is not None:
            continue
        wrapper = wrappers[name]
        layer, quantizer = wrapper.layer, wrapper.weight_quantizer
        weight = layer.weight.detach()
        bias = None if layer.bias is None else layer.bias.detach()
        layer_output = lambda inputs, quantized: rows_forward(inputs, quantized, bias, layer_groups(layer))
        with layer_inputs.collect(name, max_rows, memory_limit, generator, "sequential mse") as cache:
            rows = lambda: _chunks(cache, layer_inputs.device)
            current = output_error(fake_quantize(weight, quantizer.encoding), rows, layer_output)
            search = search_weight_encoding(weight, quantizer.spec, rows, layer_output, num_candidates, loss)
        quantizer.freeze(search.encoding)
        optimized.append(name)
        before.append(current.mse)
        after.append(search.error.mse)
    skipped = {name: reason for name, reason in reasons.items() if reason is not None}
    return SequentialMSEResult(tuple(optimized), tuple(before), tuple(after), skipped,
                               time.perf_counter() - start)


def _skip_reason(wrapper: WeightQuantized, reached: bool) -> str | None:
    """Why sequential MSE leaves this layer alone, or None."""
    if not reached:
        return "not reached by the first batch"
    reason = weight_skip_reason(wrapper)
    if reason is not None:
        return reason
    spec = wrapper.weight_quantizer.spec
    if spec.axis is not None and spec.axis % wrapper.layer.weight.dim() != 0:
        return f"per-channel weight encodings on axis {spec.axis}, not the output channels"
    return None


def _chunks(cache: RowCache, device):
    """The cache's rows in consecutive chunks of about 64 MiB, on ``device``."""
    row_bytes = 4 * (cache.inputs[0].numel() + cache.targets.shape[1])
    size = max(1, _CHUNK_BYTES // row_bytes)
    for first in range(0, cache.count, size):
        last = min(first + size, cache.count)
        yield cache.inputs[first:last].to(device), cache.targets[first:last].to(device)
