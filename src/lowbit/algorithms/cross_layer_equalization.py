"""Cross-layer equalization and high-bias absorption (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", §4.1 and §4.2.2), vectorised over channels of weight tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EqualizedGroup:
    """One chain of layers equalized together: ``layers`` in data-flow order, the ReLU6 modules (or Clip nodes) replaced
    by ReLU, the layers whose high bias moved into their successor, and the sweeps taken."""

    layers: tuple[str, ...]
    relu6_replaced: tuple[str, ...]
    high_bias_absorbed: tuple[str, ...]
    sweeps: int


def output_channel_ranges(weight: torch.Tensor) -> torch.Tensor:
    """max |W[i]| per output channel ``i`` (over every other dim)."""
    return weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)


def input_channel_ranges(weight: torch.Tensor, depthwise: bool = False) -> torch.Tensor:
    """max |W[:, i]| per input channel ``i``; for a depthwise weight, max |W[i]|."""
    return output_channel_ranges(weight if depthwise else weight.transpose(0, 1))


def equalization_scales(range_1: torch.Tensor, range_2: torch.Tensor) -> torch.Tensor:
    """``s_i = sqrt(r1_i r2_i) / r2_i`` (paper eq. 11); 1 where either range is zero or not finite
    (dead channels are left alone)."""
    scales = torch.sqrt(range_1 * range_2) / range_2
    valid = (range_1 > 0) & (range_2 > 0) & torch.isfinite(scales) & (scales > 0)
    return torch.where(valid, scales, torch.ones_like(scales))


def _along(t: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return t.reshape(shape)


@torch.no_grad()
def scale_pair_(w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, scales: torch.Tensor,
                depthwise: bool = False) -> None:
    """In place: ``W1[i] /= s_i``, ``b1[i] /= s_i``, ``W2[:, i] *= s_i`` (``W2[i] *= s_i`` when the
    second layer is ``depthwise``)."""
    scales = scales.to(w1.dtype)
    w1.div_(_along(scales, 0, w1.dim()))
    if b1 is not None:
        b1.div_(scales.to(b1.dtype))
    w2.mul_(_along(scales.to(w2.dtype), 0 if depthwise else 1, w2.dim()))


@torch.no_grad()
def equalize_chain_(weights: list[torch.Tensor], biases: list[torch.Tensor | None],
                    depthwise: list[bool], max_sweeps: int = 100,
                    tolerance: float = 1e-6) -> tuple[list[torch.Tensor], int]:
    """Equalize a chain ``L0 → ... → Ln`` in place, sweeping its pairs until every scale is within ``tolerance`` of 1.
    Returns, per layer but the last, each output channel's total factor (product of ``1/s``), and the sweeps taken."""
    if len(weights) < 2:
        raise ValueError("a chain needs at least two layers")
    factors = [torch.ones(w.shape[0], dtype=torch.float64, device=w.device) for w in weights[:-1]]
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        worst = 0.0
        for k in range(len(weights) - 1):
            scales = equalization_scales(output_channel_ranges(weights[k]),
                                         input_channel_ranges(weights[k + 1], depthwise[k + 1]))
            scale_pair_(weights[k], biases[k], weights[k + 1], scales, depthwise[k + 1])
            factors[k] /= scales.to(torch.float64)
            worst = max(worst, float((scales - 1).abs().max()))
        if worst <= tolerance:
            break
    return [f.to(weights[k].dtype) for k, f in enumerate(factors)], sweeps


def absorbable_shift(beta: torch.Tensor, gamma: torch.Tensor, num_sigmas: float = 3.0) -> torch.Tensor:
    """``c = max(0, beta - num_sigmas |gamma|)`` (paper §4.2.2): the part of a pre-ReLU activation
    distributed as N(beta, gamma^2) that is (almost surely) always passed through the ReLU."""
    return torch.clamp(beta - num_sigmas * gamma.abs(), min=0)


@torch.no_grad()
def absorb_high_bias_(b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, shift: torch.Tensor,
                      depthwise: bool = False) -> None:
    """In place: ``b1 -= c``, ``b2 += W2 c``; layer 2 must not pad (no padding, or 1x1 / Linear).
    Exact when layer 1's pre-activation is ≥ c everywhere, since then ``relu(x - c) + c = relu(x)``."""
    shift = shift.to(b1.dtype)
    b1.sub_(shift)
    if depthwise:
        b2.add_(w2.reshape(w2.shape[0], -1).sum(dim=1) * shift.to(w2.dtype))
    else:
        summed = w2.sum(dim=tuple(range(2, w2.dim()))) if w2.dim() > 2 else w2  # [out, in]
        b2.add_(summed @ shift.to(w2.dtype))
