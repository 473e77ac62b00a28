"""AdaRound on a QuantSim: learn, layer by layer in call order, whether each weight rounds up or
down, so that the layer's output on its quantized input matches the float model's output."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lowbit.algorithms.adaround import (annealed_beta, grid_weight, initial_alpha, rectified_sigmoid,
                                        rounding_regularizer)
from lowbit.errors import OptimizationError, SpecError
from lowbit.progress import progress
from lowbit.quant.fake_quant import fake_quantize
from lowbit.quant.layout import broadcastable
from lowbit.torch.layer_activation import following_activation
from lowbit.torch.layer_inputs import layer_inputs_for, weight_skip_reason
from lowbit.torch.layer_rows import layer_groups, rows_forward
from lowbit.torch.row_cache import RowCache
from lowbit.torch.weight_quantized import WeightQuantized

DEFAULT_ITERATIONS = 1000
"""Iterations per layer: the smallest count within 2 % of the paper's 10 000 in layer output error
(bench/bench_adaround_iterations.py)."""


@dataclass(frozen=True)
class LayerRounding:
    """One layer's outcome: iterations run, seconds, and the output MSE (on its cached rows) of
    nearest rounding and of the rounding kept."""

    name: str
    iterations: int
    seconds: float
    nearest_mse: float
    rounded_mse: float


@dataclass(frozen=True)
class AdaroundResult:
    """What ``adaround`` did: one entry per rounded layer, the skipped layers (name → why), total time."""

    layers: tuple[LayerRounding, ...]
    skipped: dict[str, str]
    seconds: float

    @property
    def mean_error_change(self) -> float:
        """Mean relative change of the layers' output MSE against nearest rounding (−0.6 = −60 %)."""
        changes = [r.rounded_mse / r.nearest_mse - 1 for r in self.layers if r.nearest_mse > 0]
        return sum(changes) / len(changes) if changes else 0.0

    def __str__(self) -> str:
        skipped = "".join(f", skipped {name} ({reason})" for name, reason in self.skipped.items())
        return (f"adaround: {len(self.layers)} layers, {self.seconds:.0f} s, mean layer output MSE "
                f"{100 * self.mean_error_change:+.0f} % vs nearest rounding{skipped}")


def adaround(sim, data, num_iterations: int = DEFAULT_ITERATIONS, num_batches: int | None = None,
             transform=None, batch_rows: int = 1024, learning_rate: float = 1e-2, reg_weight: float = 0.01,
             warm_start: float = 0.2, max_rows: int = 16384, memory_limit: int = 512 << 20,
             seed: int = 0) -> AdaroundResult:
    """AdaRound (Nagel et al. 2020) on every weight-quantized Conv1d/Conv2d/Linear of a calibrated
    ``sim``, in place; the chosen roundings are written into the weights (on the grid) and their
    encodings frozen, so calibration keeps them and export writes them like any other. Each rounded
    layer is marked ``rounded_by_adaround``: bias correction leaves it alone, since the learned
    rounding already fits its output mean on quantized inputs.

    Per layer: up to ``max_rows`` output positions sampled evenly over ``data`` give rows of the
    layer's quantized input (the sim with earlier layers already rounded) and float output (a float
    copy of the sim), kept in memory up to ``memory_limit`` bytes, past it on disk. Errors are
    measured after the ReLU / ReLU6 that directly follows a layer (fused into it on export). Adam learns the
    rounding on ``batch_rows`` random rows per iteration, with the regulariser off for the first
    ``warm_start`` of the iterations and its exponent annealed from 20 to 2 after; a layer stops early
    once every rounding variable is exactly 0 or 1 (nothing can change after). A layer keeps nearest
    rounding if that reconstructs its output better.
    """
    if num_iterations < 1 or batch_rows < 1 or max_rows < 1:
        raise SpecError("num_iterations, batch_rows and max_rows must be at least 1")
    start = time.perf_counter()
    inputs = layer_inputs_for(sim, data, transform, num_batches, "adaround")
    order = inputs.layer_order()
    skipped = {name: "not reached by the first batch" for name, m in sim.model.named_modules()
               if isinstance(m, WeightQuantized) and name not in order}
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for name in progress(order, "adaround", len(order), unit="layer"):
        wrapper = sim.model.get_submodule(name)
        reason = weight_skip_reason(wrapper)
        if reason is not None:
            skipped[name] = reason
            continue
        layer_start = time.perf_counter()
        activation = following_activation(sim.model, name) or _identity
        with inputs.collect(name, max_rows, memory_limit, generator, "adaround inputs") as cache:
            iterations, nearest_mse, rounded_mse = _round_layer(
                name, wrapper, cache, activation, num_iterations, batch_rows, learning_rate, reg_weight,
                warm_start, generator)
        layers.append(LayerRounding(name, iterations, time.perf_counter() - layer_start, nearest_mse,
                                    rounded_mse))
    return AdaroundResult(tuple(layers), skipped, time.perf_counter() - start)


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _round_layer(name: str, wrapper: WeightQuantized, cache: RowCache, activation, iterations: int,
                 batch_rows: int, learning_rate: float, reg_weight: float, warm_start: float,
                 generator: torch.Generator) -> tuple[int, float, float]:
    """Learn the layer's rounding, write the better of it and nearest rounding into the weight, freeze
    the encoding; returns (iterations run, nearest MSE, kept MSE), errors measured after ``activation``."""
    layer, quantizer = wrapper.layer, wrapper.weight_quantizer
    encoding = quantizer.encoding
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    groups = layer_groups(layer)
    scale = broadcastable(encoding.scale, weight, encoding.spec)
    low = broadcastable(encoding.offset, weight, encoding.spec).to(weight.dtype)
    high = low + (encoding.spec.levels - 1)
    ratio = weight / scale
    floor = ratio.floor()
    alpha = initial_alpha(ratio - floor).requires_grad_(True)
    optimizer = torch.optim.Adam([alpha], lr=learning_rate)
    run = 0
    for run in range(1, iterations + 1):
        rows, targets = cache.sample(batch_rows, generator, weight.device)
        h = rectified_sigmoid(alpha)
        output = activation(rows_forward(rows, grid_weight(floor, h, scale, low, high), bias, groups))
        loss = (output - activation(targets)).pow(2).sum(dim=1).mean()
        beta = annealed_beta(run - 1, iterations, warm_start)
        if beta is not None:
            loss = loss + reg_weight * rounding_regularizer(h, beta)
        if not bool(torch.isfinite(loss)):
            raise OptimizationError(f"adaround: non-finite loss at layer {name!r}, iteration {run}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if beta is not None and run % 50 == 0 and _decided(alpha):
            break
    with torch.no_grad():
        rounded = grid_weight(floor, (rectified_sigmoid(alpha) >= 0.5).to(weight.dtype), scale, low, high)
        nearest = fake_quantize(weight, encoding)
        nearest_mse = _output_mse(cache, nearest, bias, groups, activation)
        rounded_mse = _output_mse(cache, rounded, bias, groups, activation)
        layer.weight.copy_(rounded if rounded_mse < nearest_mse else nearest)
        layer.rounded_by_adaround = True
    quantizer.freeze(encoding)
    return run, nearest_mse, min(rounded_mse, nearest_mse)


def _decided(alpha: torch.Tensor) -> bool:
    """Whether every rounding variable sits exactly at 0 or 1 (its gradient is zero from then on)."""
    with torch.no_grad():
        h = rectified_sigmoid(alpha)
        return bool(((h == 0) | (h == 1)).all())


def _output_mse(cache: RowCache, weight: torch.Tensor, bias, groups: int, activation,
                chunk: int = 4096) -> float:
    """Mean squared error of the layer's output with ``weight`` against the cached float outputs, both
    after ``activation``."""
    total, count = 0.0, 0
    for first in range(0, cache.count, chunk):
        rows = cache.inputs[first:first + chunk].to(weight.device)
        targets = cache.targets[first:first + chunk].to(weight.device)
        error = activation(rows_forward(rows, weight, bias, groups)) - activation(targets)
        total += float(error.pow(2).sum())
        count += targets.numel()
    return total / max(count, 1)
