"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization") on tensors: a weight
on a grid of step s is (floor(w / s) + h) · s, h in [0, 1] (nearest rounding: h = [frac(w / s) ≥ ½]); AdaRound learns
h = clamp(σ(α)(ζ − γ) + γ, 0, 1) per weight to minimise the layer's output error, the annealed regulariser
Σ 1 − |2h − 1|^β driving every h to 0 or 1."""

from __future__ import annotations

import math

import torch

ZETA, GAMMA = 1.1, -0.1
"""Stretch of the rectified sigmoid: σ is scaled to (γ, ζ) then clipped to [0, 1], so h reaches 0
and 1 exactly (and its gradient vanishes there)."""


def rectified_sigmoid(alpha: torch.Tensor) -> torch.Tensor:
    """h(α) = clamp(σ(α)(ζ − γ) + γ, 0, 1)."""
    return (torch.sigmoid(alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def initial_alpha(remainder: torch.Tensor) -> torch.Tensor:
    """α with h(α) equal to ``remainder`` (the fractional part w / s − floor(w / s)): the soft weight
    starts at the float weight."""
    probability = ((remainder - GAMMA) / (ZETA - GAMMA)).clamp(1e-6, 1 - 1e-6)
    return torch.log(probability / (1 - probability))


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Σ 1 − |2h − 1|^β: zero when every h is 0 or 1; a large β only pushes values already near."""
    return (1 - (2 * h - 1).abs().pow(beta)).sum()


def annealed_beta(iteration: int, iterations: int, warm_start: float, start: float = 20.0,
                  end: float = 2.0) -> float | None:
    """β for ``iteration``: None during the warm start (no regulariser), then cosine-annealed from
    ``start`` to ``end`` over the remaining iterations."""
    first = warm_start * iterations
    if iteration < first:
        return None
    progress = (iteration - first) / max(iterations - first, 1)
    return end + 0.5 * (start - end) * (1 + math.cos(progress * math.pi))


def grid_weight(floor: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, low: torch.Tensor,
                high: torch.Tensor) -> torch.Tensor:
    """The weight (floor + h) · scale with the grid index clamped to [low, high] (centred grid
    indices: offset and offset + levels − 1); soft for soft ``h``, on the grid for h in {0, 1}."""
    return torch.maximum(torch.minimum(floor + h, high), low) * scale
