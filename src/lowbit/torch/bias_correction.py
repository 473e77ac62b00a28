"""Bias correction of a QuantSim's layers: forward pre-hooks gather each layer's input mean, the math
in ``lowbit.algorithms.bias_correction`` turns it into the bias update."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.algorithms.bias_correction import InputMean, correct_bias_, expected_output_shift
from lowbit.errors import NotCalibratedError, SpecError
from lowbit.torch.weight_quantized import WeightQuantized

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MODES = ("empirical", "analytical")


@dataclass(frozen=True)
class BiasCorrectionResult:
    """What ``correct_bias`` changed: the corrected layers (module names in ``sim.model``), the
    weight-quantized layers it skipped (types it cannot handle, or layers no batch reached), the mean
    |Δ| over every corrected output channel, and how many batches it ran."""

    corrected: tuple[str, ...]
    skipped: tuple[str, ...]
    mean_abs_shift: float
    batches: int

    def __str__(self) -> str:
        skipped = f", skipped {', '.join(self.skipped)}" if self.skipped else ""
        return (f"bias correction: {len(self.corrected)} layers, {self.batches} batches, "
                f"mean |shift| {self.mean_abs_shift:.3g}{skipped}")


def correct_bias(sim, data, mode: str = "empirical", num_batches: int | None = None,
                 transform=None) -> BiasCorrectionResult:
    """Bias correction (Nagel et al. 2019, §4.2), in place on ``sim``'s layers (the user's model is
    untouched: the sim holds a copy).

    ``mode="empirical"``: one pass over ``data`` with every quantizer active; forward pre-hooks on
    each weight-quantized Conv1d/2d/3d or Linear record the mean of its (simulated) input per
    channel. Weight quantization shifts the layer's expected output by ``Δ = (W_q − W) E[x]``
    (convolutions: weight error summed over the kernel; grouped/depthwise convolutions: each output
    channel over its group's inputs; exact but for zero padding), and ``bias −= Δ`` removes it (a zero
    bias is created where the layer had none). All layers use the means of the same pass, taken
    before any correction. Other weight-quantized layers (ConvTranspose, Embedding) are skipped and
    named in the result, as are layers no batch reached.

    ``mode="analytical"`` (data-free, from BatchNorm statistics) is not implemented yet: it raises
    ``SpecError``.

    Raises ``NotCalibratedError`` on a sim that was never calibrated and ``DataError`` on empty or
    non-finite data.
    """
    if mode not in _MODES:
        raise SpecError(f"unknown bias correction mode {mode!r}; choose one of {', '.join(_MODES)}")
    if mode == "analytical":
        raise SpecError("analytical bias correction (from BatchNorm statistics) is not implemented yet; "
                        "use mode='empirical' with calibration data")
    if not sim.is_calibrated:
        raise NotCalibratedError("bias correction needs a calibrated sim: call sim.calibrate(data) first")

    wrappers = {name: m for name, m in sim.model.named_modules() if isinstance(m, WeightQuantized)}
    layers = {name: w for name, w in wrappers.items() if isinstance(w.layer, _CONVOLUTIONS + (nn.Linear,))}
    means = {name: InputMean(-1 if isinstance(w.layer, nn.Linear) else 1) for name, w in layers.items()}

    def recorder(mean: InputMean):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                mean.observe(args[0])
        return hook

    handles = [layers[name].register_forward_pre_hook(recorder(mean)) for name, mean in means.items()]
    try:
        batches = sim.run_on(data, transform, num_batches, "bias correction")
    finally:
        for handle in handles:
            handle.remove()

    corrected, shifts = [], []
    with torch.no_grad():
        for name, wrapper in layers.items():
            input_mean = means[name].mean
            if input_mean is None:
                continue
            layer = wrapper.layer
            weight_error = wrapper.weight_quantizer(layer.weight) - layer.weight
            groups = getattr(layer, "groups", 1)
            shift = expected_output_shift(weight_error, input_mean.to(weight_error.device), groups)
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                                      device=layer.weight.device))
            correct_bias_(layer.bias, shift)
            corrected.append(name)
            shifts.append(shift.abs().to(torch.float64))
    skipped = tuple(name for name in wrappers if name not in corrected)
    mean_abs = float(torch.cat(shifts).mean()) if shifts else 0.0
    return BiasCorrectionResult(tuple(corrected), skipped, mean_abs, batches)
