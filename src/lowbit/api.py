"""The one-call entry points: quantize a model end to end, load encodings back into a sim."""

from __future__ import annotations

import copy

from torch import nn

from lowbit.data import as_call
from lowbit.errors import DataError, GraphCaptureError
from lowbit.torch.batchnorm_fold import fold_batchnorm
from lowbit.torch.encodings_io import apply_encodings
from lowbit.torch.quantsim import QuantSim


def quantize(model: nn.Module, data, example_input=None, target="default", param_bits: int | None = None,
             act_bits: int | None = None, scheme: str = "minmax", per_channel: bool | None = None,
             transform=None, num_batches: int | None = None) -> QuantSim:
    """Fold BatchNorm (on a copy; skipped where torch.fx cannot trace), build a QuantSim and calibrate
    it on ``data``; returns the sim."""
    if example_input is None:
        example_input = _first_batch(data, transform)
    model = copy.deepcopy(model).eval()
    try:
        fold_batchnorm(model, example_input)
    except GraphCaptureError:
        pass  # untraceable models keep their BatchNorm layers; QuantSim says how it captured them

    sim = QuantSim(model, example_input, target=target, param_bits=param_bits, act_bits=act_bits,
                   scheme=scheme, per_channel=per_channel)
    return sim.calibrate(data, transform=transform, num_batches=num_batches)


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
