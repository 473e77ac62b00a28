"""AdaRound of one layer on cached rows (input patch, float output): the per-layer optimisation both
front ends run, on tensors."""

from __future__ import annotations

import torch

from lowbit.algorithms.layer_rows import rows_forward
from lowbit.algorithms.row_cache import RowCache
from lowbit.algorithms.soft_rounding import SoftRounding, learn_rounding
from lowbit.quant.encoding import Encoding
from lowbit.quant.fake_quant import fake_quantize

DEFAULT_ITERATIONS = 1000
"""AdaRound's iterations per block or layer, on both front ends: chosen with
bench/bench_adaround_iterations.py (per layer and ``--granularity block``) against the paper's 10 000."""


def round_on_rows(weight: torch.Tensor, bias: torch.Tensor | None, groups: int, encoding: Encoding,
                  cache: RowCache, activation, iterations: int, batch_rows: int, learning_rate: float,
                  reg_weight: float, warm_start: float, generator: torch.Generator,
                  where: str) -> tuple[torch.Tensor, int, float, float]:
    """Learn the rounding of ``weight`` (``[out, in/groups, *kernel]``) on ``encoding``'s grid so the layer's output
    after ``activation`` matches the cached float outputs (errors name ``where``); returns the better of the learned
    and the nearest rounding (on the grid), the iterations run, and both output MSEs (nearest, kept)."""
    soft = SoftRounding(weight, encoding)

    def batch_loss() -> torch.Tensor:
        rows, targets = cache.sample(batch_rows, generator, weight.device)
        output = activation(rows_forward(rows, soft(), bias, groups))
        return (output - activation(targets)).pow(2).sum(dim=1).mean()

    def output_mse(candidate: torch.Tensor) -> float:
        return cache.mean_squared(lambda rows, targets: activation(rows_forward(rows, candidate, bias, groups))
                                  - activation(targets), weight.device, 4096)

    run = learn_rounding([soft], batch_loss, iterations, learning_rate, reg_weight, warm_start, where)
    with torch.no_grad():
        rounded = soft.hard()
        nearest = fake_quantize(weight, encoding)
        nearest_mse, rounded_mse = output_mse(nearest), output_mse(rounded)
    kept = rounded if rounded_mse < nearest_mse else nearest
    return kept, run, nearest_mse, min(rounded_mse, nearest_mse)
