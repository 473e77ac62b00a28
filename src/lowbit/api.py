"""The one-call entry points: quantize a model end to end, load encodings back into a sim."""

from __future__ import annotations

import copy

from torch import nn

from lowbit.data import as_call
from lowbit.errors import DataError, GraphCaptureError, SpecError
from lowbit.torch.batchnorm_fold import fold_batchnorm
from lowbit.torch.bias_correction import correct_bias
from lowbit.torch.encodings_io import apply_encodings
from lowbit.torch.equalize import equalize
from lowbit.torch.quantsim import QuantSim


TECHNIQUES = ("equalize", "bias_correction")
"""Techniques ``quantize`` can apply, always in this (the recommended) order around calibration."""


def quantize(model: nn.Module, data, example_input=None, target="default", param_bits: int | None = None,
             act_bits: int | None = None, scheme: str = "minmax", per_channel: bool | None = None,
             transform=None, num_batches: int | None = None, techniques=()) -> QuantSim:
    """Fold BatchNorm (on a copy; skipped where torch.fx cannot trace), optionally equalize, build a
    QuantSim, calibrate it on ``data``, optionally correct biases; returns the sim.

    ``techniques``: any of ``"equalize"`` (before calibration) and ``"bias_correction"`` (after).
    """
    unknown = [t for t in techniques if t not in TECHNIQUES]
    if unknown:
        raise SpecError(f"unknown technique {unknown[0]!r}; choose from {', '.join(TECHNIQUES)}")
    if example_input is None:
        example_input = _first_batch(data, transform)
    model = copy.deepcopy(model).eval()
    try:
        fold_batchnorm(model, example_input)
    except GraphCaptureError:
        pass  # untraceable models keep their BatchNorm layers; QuantSim says how it captured them
    if "equalize" in techniques:
        equalize(model, example_input)
    sim = QuantSim(model, example_input, target=target, param_bits=param_bits, act_bits=act_bits,
                   scheme=scheme, per_channel=per_channel)
    sim.calibrate(data, transform=transform, num_batches=num_batches)
    if "bias_correction" in techniques:
        correct_bias(sim, data, num_batches=num_batches, transform=transform)
    return sim


def load_encodings(sim: QuantSim, path) -> QuantSim:
    """Set the sim's encodings from an AIMET encodings file (format 1.0.0 or 0.6.1)."""
    apply_encodings(sim, path)
    return sim


def _first_batch(data, transform):
    """The first item of ``data`` (transformed), used as the example input."""
    try:
        item = next(iter(data))
    except StopIteration:
        raise DataError("calibration data is empty: no batch was produced") from None
    item = transform(item) if transform is not None else item
    args, kwargs = as_call(item)
    return kwargs if kwargs else (args[0] if len(args) == 1 else args)
