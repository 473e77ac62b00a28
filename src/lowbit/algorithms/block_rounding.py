"""Block-wise AdaRound (Li et al. 2021, BRECQ), for every front end: learn the rounding of a block's layers
at once so its output, activation quantizers active, matches the float model's on its quantized input."""

from __future__ import annotations

import math

import torch

from lowbit.data import channels_last
from lowbit.algorithms.row_cache import RowCache
from lowbit.algorithms.soft_rounding import SoftRounding, learn_rounding
from lowbit.quant.fake_quant import fake_quantize

POSITIONS_PER_ITERATION = 16 * 28 * 28
"""Output positions (samples × spatial size) one iteration needs at most: blocks on large feature maps
take fewer samples per iteration (never fewer than 2) instead of costing many times more per step."""


def round_block(name: str, module: torch.nn.Module, wrappers: list, cache: RowCache, iterations: int,
                batch_samples: int, learning_rate: float, reg_weight: float, warm_start: float,
                generator: torch.Generator) -> tuple[int, float, float]:
    """Learn the rounding of ``wrappers`` (the layers ``module`` runs: ``.layer.weight``, ``.weight_quantizer``) on the
    cached samples; keep it or nearest, whichever fits better, frozen. Returns (iterations, nearest MSE, kept MSE)."""
    quantizers = [wrapper.weight_quantizer for wrapper in wrappers]
    softs = [SoftRounding(wrapper.layer.weight, quantizer.encoding) for wrapper, quantizer in zip(wrappers, quantizers)]
    positions = math.prod(cache.targets.shape[2:])
    samples = min(batch_samples, max(2, POSITIONS_PER_ITERATION // positions))
    device = softs[0].alpha.device

    def batch_loss() -> torch.Tensor:
        inputs, targets = cache.sample(samples, generator, device)
        return _error(module(channels_last(inputs)), targets)

    try:
        for wrapper, soft in zip(wrappers, softs):
            wrapper.weight_quantizer = soft
        run = learn_rounding(softs, batch_loss, iterations, learning_rate, reg_weight, warm_start, f"in block {name!r}")
    finally:
        for wrapper, quantizer in zip(wrappers, quantizers):
            wrapper.weight_quantizer = quantizer
    rounded = [soft.hard() for soft in softs]
    with torch.no_grad():
        nearest = [fake_quantize(wrapper.layer.weight, quantizer.encoding)
                   for wrapper, quantizer in zip(wrappers, quantizers)]
        for quantizer in quantizers:
            quantizer.freeze(quantizer.encoding, by="adaround")
        nearest_mse = _block_mse(module, wrappers, nearest, cache)
        rounded_mse = _block_mse(module, wrappers, rounded, cache)
        if nearest_mse <= rounded_mse:
            _set_weights(wrappers, nearest)
    return run, nearest_mse, min(nearest_mse, rounded_mse)


def _error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over channels (dim 1), averaged over samples and positions."""
    squared = (output - target).pow(2)
    return squared.sum(dim=1).mean() if squared.dim() > 1 else squared.mean()


def _set_weights(wrappers: list, weights: list[torch.Tensor]) -> None:
    for wrapper, weight in zip(wrappers, weights):
        wrapper.layer.weight.copy_(weight)


def _block_mse(module: torch.nn.Module, wrappers: list, weights: list[torch.Tensor], cache: RowCache) -> float:
    """Mean squared error of the block's output (as the sim computes it) with ``weights`` written in, 32 rows a pass."""
    _set_weights(wrappers, weights)
    return cache.mean_squared(lambda inputs, targets: module(channels_last(inputs)) - targets, weights[0].device, 32)
