"""A layer's weight under learned rounding: stands in for its weight quantizer while AdaRound
optimises, giving (floor(w / s) + h(α)) · s on the quantizer's frozen grid."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.algorithms.adaround import grid_weight, initial_alpha, rectified_sigmoid, rounding_regularizer
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
        self.low = broadcastable(encoding.offset, weight, encoding.spec).to(weight.dtype)
        self.high = self.low + (encoding.spec.levels - 1)
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
