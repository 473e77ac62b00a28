"""The one-call entry points, written once for every front end (``lowbit.frontend`` picks it):
quantize a model end to end, and each technique on its own."""

from __future__ import annotations

from lowbit.data import as_call, batch_of
from lowbit.errors import DataError, SpecError
from lowbit.frontend import front_end

TECHNIQUES = ("equalize", "sequential_mse", "adaround", "bias_correction")
"""Techniques ``quantize`` applies, always in this order: equalize before calibration; sequential MSE, then AdaRound
(both freeze weight encodings; activations are recalibrated after each); bias correction (not with AdaRound)."""


def quantize(model, data, example_input=None, target="default", param_bits: int | None = None,
             act_bits: int | None = None, scheme: str = "minmax", per_channel: bool | None = None,
             transform=None, num_batches: int | None = None, techniques=(), runtime=None,
             fold_batchnorm: bool = True):
    """Fold BatchNorm into a copy (where torch.fx traces; ``fold_batchnorm=False`` keeps it in float), build a sim
    (a ``QuantSim`` for an ``nn.Module``, an ``OnnxQuantSim`` for an ONNX path or ModelProto), calibrate it on ``data``
    and apply ``techniques`` (of ``TECHNIQUES``, in that order); ``runtime`` names the integer kernels the sim predicts
    (default: this machine's). Each step's result line is in ``sim.technique_results``."""
    _check_techniques(techniques, fold_batchnorm)
    steps = front_end(model)
    if example_input is None and steps.needs_example:
        example_input = _first_batch(data, transform)
    model = steps.prepare(model, example_input)
    lines = ["fold batchnorm: off"]
    if "equalize" in techniques:
        model, groups = steps.equalize(model, example_input)
        lines = [f"equalize: {len(groups)} layer groups (BatchNorm folded)"]
    elif fold_batchnorm:
        model, line = steps.fold_batchnorm(model, example_input)
        lines = [line]
    sim = steps.sim(model, example_input, target=target, param_bits=param_bits, act_bits=act_bits,
                    scheme=scheme, per_channel=per_channel, runtime=runtime)
    sim.calibrate(data, transform=transform, num_batches=num_batches)
    lines.append(f"calibrate: {sim.calibration_seconds:.1f} s")
    for name in ("sequential_mse", "adaround"):
        if name in techniques:
            lines.append(str(getattr(steps, name)(sim, data, num_batches=num_batches, transform=transform)))
            sim.calibrate(data, transform=transform, num_batches=num_batches)
    if "bias_correction" in techniques:
        lines.append(str(steps.correct_bias(sim, data, num_batches=num_batches, transform=transform)))
    sim.technique_results = tuple(lines)
    return sim


def equalize(model, example_input=None, absorb_high_bias: bool = True):
    """Cross-layer equalization into a copy (BatchNorm folded); returns (equalized model, groups). A PyTorch
    model needs ``example_input`` to trace; an ONNX model (path or ModelProto) needs none."""
    return front_end(model).equalize(model, example_input, absorb_high_bias=absorb_high_bias)


def correct_bias(sim, data=None, mode: str = "empirical", num_batches: int | None = None, transform=None):
    """Bias correction of a sim, in place (empirical, or analytical on a QuantSim); returns the result. Layers AdaRound
    rounded are left alone on both front ends."""
    return front_end(sim).correct_bias(sim, data, mode=mode, num_batches=num_batches, transform=transform)


def adaround(sim, data, **options):
    """AdaRound of a sim, in place (a QuantSim by graph block by default, see ``lowbit.torch.adaround.adaround``;
    an OnnxQuantSim layer by layer, ``lowbit.onnx.adaround``)."""
    return front_end(sim).adaround(sim, data, **options)


def sequential_mse(sim, data, **options):
    """Sequential MSE of a sim's weight encodings, in place (see ``lowbit.torch.sequential_mse`` /
    ``lowbit.onnx.adaround``)."""
    return front_end(sim).sequential_mse(sim, data, **options)


def load_encodings(sim, path):
    """Set a sim's encodings from an AIMET encodings file (format 1.0.0 or 0.6.1); returns the sim."""
    return sim.load_encodings(path)


def _check_techniques(techniques, fold_batchnorm: bool) -> None:
    """SpecError for an unknown technique or a combination that cannot run."""
    unknown = [t for t in techniques if t not in TECHNIQUES]
    if unknown:
        raise SpecError(f"unknown technique {unknown[0]!r}; choose from {', '.join(TECHNIQUES)}")
    if "equalize" in techniques and not fold_batchnorm:
        raise SpecError("equalize folds BatchNorm into the layers it scales: it cannot run with fold_batchnorm=False")
    if "adaround" in techniques and "bias_correction" in techniques:
        raise SpecError("adaround and bias_correction exclude each other: AdaRound already fits each "
                        "layer's output mean; choose one")


def _first_batch(data, transform):
    """The first item of ``data`` (transformed), used as the example input."""
    try:
        item = next(iter(data))
    except StopIteration:
        raise DataError("calibration data is empty: no batch was produced") from None
    return batch_of(as_call(transform(item) if transform is not None else item))
