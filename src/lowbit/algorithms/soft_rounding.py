"""A layer's weight under learned rounding: stands in for its weight quantizer while AdaRound
optimises, giving (floor(w / s) + h(α)) · s on the quantizer's frozen grid."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.algorithms.adaround import (annealed_beta, grid_weight, initial_alpha, rectified_sigmoid,
                                        rounding_regularizer)
from lowbit.errors import OptimizationError
from lowbit.quant.encoding import Encoding
from lowbit.quant.layout import broadcastable


class SoftRounding(nn.Module):
    """Soft-rounded ``weight`` on ``encoding``'s grid, starting at the float weight; ``alpha`` is
    the learned parameter. ``mode`` is not "quantize", so a wrapper never caches or integer-emulates it."""

    mode = "soft"

    def __init__(self, weight: torch.Tensor, encoding: Encoding):
        super().__init__()
        weight = weight.detach()
        self.scale = broadcastable(encoding.scale, weight, encoding.spec)
        offset = broadcastable(encoding.offset, weight, encoding.spec).to(weight.dtype)
        self.low, self.high = offset + encoding.spec.qmin, offset + encoding.spec.qmax
        ratio = weight / self.scale
        self.floor = ratio.floor()
        self.alpha = nn.Parameter(initial_alpha(ratio - self.floor))

    def forward(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The soft weight (the argument, the float weight a quantizer would receive, is ignored)."""
        return grid_weight(self.floor, rectified_sigmoid(self.alpha), self.scale, self.low, self.high)

    def hard(self) -> torch.Tensor:
        """The weight with every rounding variable decided (h ≥ ½ rounds up), on the grid."""
        with torch.no_grad():
            up = (rectified_sigmoid(self.alpha) >= 0.5).to(self.floor.dtype)
            return grid_weight(self.floor, up, self.scale, self.low, self.high)

    def regularizer(self, beta: float) -> torch.Tensor:
        """The rounding regulariser Σ 1 − |2h − 1|^β of this layer."""
        return rounding_regularizer(rectified_sigmoid(self.alpha), beta)

    def decided(self) -> bool:
        """Whether every rounding variable sits exactly at 0 or 1 (its gradient is zero from then on)."""
        with torch.no_grad():
            h = rectified_sigmoid(self.alpha)
            return bool(((h == 0) | (h == 1)).all())


def learn_rounding(softs: list[SoftRounding], batch_loss, iterations: int, learning_rate: float,
                   reg_weight: float, warm_start: float, where: str) -> int:
    """Adam on the ``softs``' α, each step on ``batch_loss()`` (a fresh batch) plus the annealed regulariser, until
    all are decided; returns the iterations run. A non-finite loss raises ``OptimizationError`` naming ``where``."""
    alphas = [soft.alpha for soft in softs]
    optimizer = torch.optim.Adam(alphas, lr=learning_rate)
    run = 0
    for run in range(1, iterations + 1):
        loss = batch_loss()
        beta = annealed_beta(run - 1, iterations, warm_start)
        if beta is not None:
            loss = loss + reg_weight * sum(soft.regularizer(beta) for soft in softs)
        if not bool(torch.isfinite(loss)):
            raise OptimizationError(f"adaround: non-finite loss {where}, iteration {run}")
        for alpha, gradient in zip(alphas, torch.autograd.grad(loss, alphas)):
            alpha.grad = gradient
        optimizer.step()
        if beta is not None and run % 50 == 0 and all(soft.decided() for soft in softs):
            break
    return run
