"""Learned grids kept inside the range of the activation they quantize: onnxruntime removes a Clip or Relu before
a QuantizeLinear (and so fuses it into the layer's integer kernel) only where the grid's float ends
scale·(0 − z) and scale·(top − z) lie within the clip bounds, to float32 epsilon."""

from __future__ import annotations

import math

import torch

EPSILON = float(torch.finfo(torch.float32).eps)
"""onnxruntime's tolerance when comparing a grid's ends with a Clip's bounds."""


@torch.no_grad()
def keep_grid_within(scale: torch.Tensor, zero_point: torch.Tensor | None, fixed_zero_point: torch.Tensor,
                     top: int, bounds: tuple[float, float]) -> None:
    """Clamp, in place, a learned ``zero_point`` (None: ``fixed_zero_point`` holds) and then ``scale`` so the grid
    [−z·scale, (top − z)·scale] lies within ``bounds``; the lower bound can only be met where it is ≤ 0."""
    low, high = bounds
    if zero_point is not None and math.isfinite(low) and low <= 0:
        largest = torch.floor(-low / scale.clamp(min=1e-12))
        largest = largest - (-largest * scale < low - EPSILON).to(largest.dtype)
        _lower_to(zero_point, largest.clamp(min=0))
    z = (zero_point if zero_point is not None else fixed_zero_point.to(scale.dtype)).round().clamp(0, top)
    if math.isfinite(high) and high > 0:
        span = top - z
        largest = torch.where(span > 0, high / span.clamp(min=1), scale)
        too_wide = largest * span > high + EPSILON
        largest = torch.where(too_wide, torch.nextafter(largest, torch.zeros_like(largest)), largest)
        _lower_to(scale, largest)


def _lower_to(values: torch.Tensor, limit: torch.Tensor) -> None:
    """values ← min(values, limit), in place only where some value is above: a quantizer called twice in one
    forward pass must not change its parameters under the autograd graph."""
    if bool((values > limit).any()):
        values.copy_(torch.minimum(values, limit))
