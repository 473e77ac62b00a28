"""Data-free input means for bias correction (Nagel et al. 2019, §4.2): a normal channel N(μ, σ²) (a folded BatchNorm's
output, N(β, γ²)) has a closed-form mean E[clamp(X, low, high)] after identity, ReLU or ReLU6."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def clipped_normal_mean(mean: torch.Tensor, std: torch.Tensor, low: float = -math.inf,
                        high: float = math.inf) -> torch.Tensor:
    """E[clamp(X, low, high)] per channel for X ~ N(mean, std²), in float64 (std 0: clamp(mean))."""
    mean = mean.to(torch.float64)
    std = std.to(torch.float64).abs().clamp_min(torch.finfo(torch.float64).tiny)
    a, b = (low - mean) / std, (high - mean) / std
    cdf_a, cdf_b = torch.special.ndtr(a), torch.special.ndtr(b)
    density = lambda z: torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    result = mean * (cdf_b - cdf_a) + std * (density(a) - density(b))
    if math.isfinite(low):
        result = result + low * cdf_a
    if math.isfinite(high):
        result = result + high * (1 - cdf_b)
    return result


@dataclass(frozen=True)
class ChannelStatistics:
    """What is known of a tensor per channel: its mean, and its std where every channel is normal
    (``std`` None: the mean only, e.g. after a ReLU, a sum or an average)."""

    mean: torch.Tensor
    std: torch.Tensor | None = None

    def clamped(self, low: float = -math.inf, high: float = math.inf) -> ChannelStatistics | None:
        """The statistics of ``clamp(x, low, high)``; None unless the channels are normal."""
        return None if self.std is None else ChannelStatistics(clipped_normal_mean(self.mean, self.std, low, high))

    def mean_only(self) -> ChannelStatistics:
        """These statistics without the normality (after an op that keeps only the mean)."""
        return ChannelStatistics(self.mean)

    def plus(self, other: ChannelStatistics) -> ChannelStatistics | None:
        """The statistics of a sum: means add (normality is lost); None when channels differ."""
        if self.mean.shape != other.mean.shape:
            return None
        return ChannelStatistics(self.mean.to(torch.float64) + other.mean.to(torch.float64))
