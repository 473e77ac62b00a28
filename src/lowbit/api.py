"""The one-call entry points: quantize a model end to end, load encodings back into a sim."""

from __future__ import annotations

import copy

from lowbit.data import as_call
from lowbit.errors import DataError, GraphCaptureError, SpecError
from lowbit.frontend import is_onnx_model
from lowbit.onnx.adaround import adaround as adaround_onnx
from lowbit.onnx.adaround import sequential_mse as sequential_mse_onnx
from lowbit.onnx.bias_correction import correct_bias as correct_onnx_bias
from lowbit.onnx.equalize import equalize as equalize_onnx
from lowbit.onnx.quantize import quantize_onnx
from lowbit.onnx.quantsim import OnnxQuantSim
from lowbit.torch.batchnorm_fold import fold_batchnorm as fold_torch_batchnorm
from lowbit.torch.bias_correction import correct_bias as correct_torch_bias
from lowbit.torch.capture import with_layer_modules, with_scripts_as_graphs
from lowbit.torch.equalize import equalize as equalize_torch
from lowbit.torch.adaround import adaround as adaround_torch
from lowbit.torch.quantsim import QuantSim
from lowbit.torch.sequential_mse import sequential_mse as sequential_mse_torch


TECHNIQUES = ("equalize", "sequential_mse", "adaround", "bias_correction")
"""Techniques ``quantize`` can apply, always in this (the recommended) order: equalize before
calibration; after it sequential MSE (chooses each weight range), AdaRound (rounds on that grid) —
both freeze the weight encodings and activations are recalibrated after each — and bias correction
(not with AdaRound, which already fits each layer's output mean)."""


def quantize(model, data, example_input=None, target="default", param_bits: int | None = None,
             act_bits: int | None = None, scheme: str = "minmax", per_channel: bool | None = None,
             transform=None, num_batches: int | None = None, techniques=(), runtime=None,
             fold_batchnorm: bool = True) -> QuantSim:
    """Fold BatchNorm (on a copy; skipped where torch.fx cannot trace, or with ``fold_batchnorm=False``:
    BN then runs as its own op, in float between quantizers), build a QuantSim, calibrate it on
    ``data`` and apply ``techniques`` (any of ``TECHNIQUES``, run in that order whatever the order
    given); returns the sim, with one result line per step in ``sim.technique_results``.
    ``model`` may also be an ONNX file path or ``onnx.ModelProto``: it is quantized by the ONNX front end.
    ``runtime`` names the integer kernels the sim predicts (see :mod:`lowbit.kernels`; default: this
    machine's).
    """
    unknown = [t for t in techniques if t not in TECHNIQUES]
    if unknown:
        raise SpecError(f"unknown technique {unknown[0]!r}; choose from {', '.join(TECHNIQUES)}")
    if "equalize" in techniques and not fold_batchnorm:
        raise SpecError("equalize folds BatchNorm into the layers it scales: it cannot run with fold_batchnorm=False")
    if "adaround" in techniques and "bias_correction" in techniques:
        raise SpecError("adaround and bias_correction exclude each other: AdaRound already fits each "
                        "layer's output mean; choose one")
    if is_onnx_model(model):
        return quantize_onnx(model, data, target=target, param_bits=param_bits, act_bits=act_bits, scheme=scheme,
                             per_channel=per_channel, transform=transform, num_batches=num_batches,
                             techniques=techniques, runtime=runtime, fold_batchnorm=fold_batchnorm)
    if example_input is None:
        example_input = _first_batch(data, transform)
    model = with_layer_modules(with_scripts_as_graphs(copy.deepcopy(model).eval(), example_input), example_input)
    lines = ["fold batchnorm: off"]
    if fold_batchnorm:
        try:
            lines = [f"fold batchnorm: {len(fold_torch_batchnorm(model, example_input))} layers"]
        except GraphCaptureError:
            lines = ["fold batchnorm: skipped (torch.fx cannot trace the model)"]
    if "equalize" in techniques:
        lines.append(f"equalize: {len(equalize_torch(model, example_input))} layer groups")
    sim = QuantSim(model, example_input, target=target, param_bits=param_bits, act_bits=act_bits,
                   scheme=scheme, per_channel=per_channel, runtime=runtime)
    sim.calibrate(data, transform=transform, num_batches=num_batches)
    lines.append(f"calibrate: {sim.calibration_seconds:.1f} s")
    for name, technique in (("sequential_mse", sequential_mse_torch), ("adaround", adaround_torch)):
        if name in techniques:
            lines.append(str(technique(sim, data, num_batches=num_batches, transform=transform)))
            sim.calibrate(data, transform=transform, num_batches=num_batches)
    if "bias_correction" in techniques:
        lines.append(str(correct_torch_bias(sim, data, num_batches=num_batches, transform=transform)))
    sim.technique_results = tuple(lines)
    return sim


def equalize(model, example_input=None, absorb_high_bias: bool = True):
    """Cross-layer equalization: a PyTorch model in place (returns the equalized groups; see
    ``lowbit.torch.equalize.equalize``), or an ONNX model (path or ModelProto) into a copy (returns the
    equalized copy, BatchNorms folded, and the groups)."""
    if is_onnx_model(model):
        return equalize_onnx(model, absorb_high_bias=absorb_high_bias)
    if example_input is None:
        raise SpecError("equalize needs example_input for a PyTorch model (to trace its graph)")
    return equalize_torch(model, example_input, absorb_high_bias=absorb_high_bias)


def correct_bias(sim, data=None, mode: str = "empirical", num_batches: int | None = None, transform=None):
    """Bias correction of a QuantSim (empirical or analytical; see ``lowbit.torch.bias_correction``) or
    of an OnnxQuantSim (empirical; see ``lowbit.onnx.bias_correction``), in place; returns the result."""
    if isinstance(sim, OnnxQuantSim):
        if mode != "empirical":
            raise SpecError(f"bias correction mode {mode!r} is not available for ONNX models yet; use 'empirical'")
        return correct_onnx_bias(sim, data, num_batches=num_batches, transform=transform)
    return correct_torch_bias(sim, data, mode=mode, num_batches=num_batches, transform=transform)


def adaround(sim, data, **options):
    """AdaRound of a QuantSim (see ``lowbit.torch.adaround.adaround``: by graph block by default) or of
    an OnnxQuantSim (layer by layer; see ``lowbit.onnx.adaround.adaround``), in place."""
    return (adaround_onnx if isinstance(sim, OnnxQuantSim) else adaround_torch)(sim, data, **options)


def sequential_mse(sim, data, **options):
    """Sequential MSE of a QuantSim or an OnnxQuantSim's weight encodings, in place (see
    ``lowbit.torch.sequential_mse`` / ``lowbit.onnx.adaround``)."""
    return (sequential_mse_onnx if isinstance(sim, OnnxQuantSim) else sequential_mse_torch)(sim, data, **options)


def load_encodings(sim, path):
    """Set a QuantSim's or OnnxQuantSim's encodings from an AIMET encodings file (format 1.0.0 or
    0.6.1); returns the sim."""
    return sim.load_encodings(path)


def _first_batch(data, transform):
    """The first item of ``data`` (transformed), used as the example input."""
    try:
        item = next(iter(data))
    except StopIteration:
        raise DataError("calibration data is empty: no batch was produced") from None
    item = transform(item) if transform is not None else item
    args, kwargs = as_call(item)
    return kwargs if kwargs else (args[0] if len(args) == 1 else args)
