"""What the report plots per layer: each output channel's weight range, and the float activation's
histogram with the clipping range its quantizer chose (on the first batch's first samples)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.data import map_call

HISTOGRAM_BINS = 64
SAMPLES = 8
"""Samples of the first batch whose activations are kept (float and quantized) for histograms and MSE."""


@dataclass
class ActivationView:
    """The float values' histogram at one activation quantizer, its clipping range, and the mean squared
    error of the fully quantized sim's value there against the float model's."""

    key: str
    counts: list[int]
    edges: list[float]
    clip: tuple[float, float]
    mse: float


def weight_ranges(sim, groups) -> dict[str, tuple[list[float], list[float]]]:
    """Per layer with a weight: each output channel's (min, max), on the quantizer's channel axis."""
    return {group.name: channel_ranges(sim.weight(point.key).detach().float().cpu(), point.spec)
            for group in groups if group.weights for point in [sim.point(group.weights[0])]}


def channel_ranges(weight: torch.Tensor, spec) -> tuple[list[float], list[float]]:
    """Each output channel's (min, max) of ``weight``, on ``spec``'s channel axis (0 when per tensor)."""
    axis = spec.axis if spec.axis is not None else 0
    rows = weight.movedim(axis, 0).reshape(weight.shape[axis], -1)
    return rows.amin(1).tolist(), rows.amax(1).tolist()


def activation_views(sim, call, groups) -> dict[str, ActivationView]:
    """Per layer with an activation quantizer, the view of its last one on ``call``'s first samples."""
    keys = {group.activations[-1]: group.name for group in groups if group.activations}
    floats, quantized = sim.quantizer_values(*first_samples(call, SAMPLES), keys)
    quantizers = sim.quantizers()
    return {name: activation_view(key, floats[key], quantized[key], quantizers[key].encoding)
            for key, name in keys.items() if key in floats and key in quantized}


def activation_view(key: str, values: torch.Tensor, quantized: torch.Tensor, encoding) -> ActivationView:
    """The histogram of the float ``values`` over their range and ``encoding``'s, and the MSE of the
    ``quantized`` values against them."""
    values = values.flatten()
    clip = (float(encoding.min.min()), float(encoding.max.max()))
    lo, hi = min(float(values.min()), clip[0]), max(float(values.max()), clip[1])
    hi = hi if hi > lo else lo + 1.0
    counts = torch.histc(values, HISTOGRAM_BINS, lo, hi)
    edges = torch.linspace(lo, hi, HISTOGRAM_BINS + 1)
    mse = float((quantized.flatten().double() - values.double()).square().mean())
    return ActivationView(key, [int(c) for c in counts.tolist()], edges.tolist(), clip, mse)


def first_samples(call, samples: int):
    """``call`` with every tensor of two or more dimensions cut to its first ``samples`` rows."""
    return map_call(lambda v: v[:samples] if isinstance(v, torch.Tensor) and v.dim() >= 2 else v, *call)
