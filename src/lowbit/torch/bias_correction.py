"""Bias correction of a QuantSim's layers: input means measured by hooks or derived from folded BatchNorm
statistics, turned into bias updates by ``lowbit.algorithms.bias_correction``."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.algorithms.bias_correction import (BiasCorrectionResult, InputMean, correct_bias_, keeps_bias,
                                               expected_output_shift)
from lowbit.algorithms.bias_correction_analytical import ChannelStatistics
from lowbit.errors import DataError, NotCalibratedError, SpecError
from lowbit.quant.quantizer import Quantizer
from lowbit.torch.batchnorm_fold import FoldedBatchNorm
from lowbit.torch.float_parameters import keep_float_parameters
from lowbit.torch.integer_add import IntegerAdd
from lowbit.torch.module_graph import node_arg
from lowbit.torch.weight_quantized import WeightQuantized

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MODES = ("empirical", "analytical")

_PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, Quantizer)
_AVERAGE_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_AVERAGE_FUNCTIONS = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_ADD_FUNCTIONS = (operator.add, torch.add)


def correct_bias(sim, data=None, mode: str = "empirical", num_batches: int | None = None,
                 transform=None) -> BiasCorrectionResult:
    """Bias correction (Nagel et al. 2019, §4.2), in place on ``sim``'s weight-quantized Conv and Linear layers:
    ``bias −= (W_q − W) E[x]``, E[x] measured on ``data`` ("empirical") or derived from folded BatchNorm statistics
    ("analytical", data-free; ``data`` covers the rest when given). ConvTranspose, Embedding and AdaRounded layers
    are skipped and named in the result; raises ``NotCalibratedError`` on an uncalibrated sim."""
    if mode not in _MODES:
        raise SpecError(f"unknown bias correction mode {mode!r}; choose one of {', '.join(_MODES)}")
    if data is None and mode == "empirical":
        raise DataError("empirical bias correction needs data; pass calibration batches or use mode='analytical'")
    if not sim.is_calibrated:
        raise NotCalibratedError("bias correction needs a calibrated sim: call sim.calibrate(data) first")

    wrappers = {name: m for name, m in sim.model.named_modules() if isinstance(m, WeightQuantized)}
    layers = {name: w for name, w in wrappers.items() if isinstance(w.layer, _CONVOLUTIONS + (nn.Linear,))
              and not keeps_bias(w.weight_quantizer)}
    means = _derived_input_means(sim.model, layers) if mode == "analytical" else {}
    derived = set(means)
    measure = {name: wrapper for name, wrapper in layers.items() if name not in means}
    batches = 0
    if measure and data is not None:
        measured, batches = _measured_input_means(sim, measure, data, transform, num_batches)
        means.update(measured)

    corrected, shifts = [], []
    with torch.no_grad():
        for name, wrapper in layers.items():
            if name in means:
                shifts.append(_correct_layer(wrapper, means[name]).abs().to(torch.float64))
                corrected.append(name)
    skipped = tuple(name for name in wrappers if name not in corrected)
    mean_abs = float(torch.cat(shifts).mean()) if shifts else 0.0
    from_statistics = tuple(name for name in corrected if name in derived)
    return BiasCorrectionResult(tuple(corrected), skipped, mean_abs, batches, mode, from_statistics)


def _correct_layer(wrapper: WeightQuantized, input_mean: torch.Tensor) -> torch.Tensor:
    """``bias −= Δ`` on ``wrapper``'s layer; returns Δ. A folded BatchNorm's statistics stay as they
    were: the correction restores the output mean that weight quantization moved."""
    layer = wrapper.layer
    recorded = getattr(layer, "folded_batchnorm", None)
    moments = recorded.moments(layer) if recorded is not None else None
    weight_error = wrapper.weight_quantizer(layer.weight) - layer.weight
    shift = expected_output_shift(weight_error, input_mean.to(weight_error.device), getattr(layer, "groups", 1))
    keep_float_parameters(wrapper)
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                              device=layer.weight.device))
    correct_bias_(layer.bias, shift)
    if moments is not None:
        layer.folded_batchnorm = FoldedBatchNorm.of(layer, *moments)
    return shift


def _measured_input_means(sim, layers: dict, data, transform, num_batches) -> tuple[dict, int]:
    """Each layer's input mean per channel over one pass of the sim on ``data``, and the batch count."""
    means = {name: InputMean(-1 if isinstance(w.layer, nn.Linear) else 1) for name, w in layers.items()}

    def recorder(mean: InputMean):
        def hook(module, args):
            if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
                mean.observe(args[0])
        return hook

    handles = [layers[name].register_forward_pre_hook(recorder(mean)) for name, mean in means.items()]
    try:
        batches = sim.stream(data, transform, num_batches, "bias correction")
    finally:
        for handle in handles:
            handle.remove()
    return {name: mean.mean for name, mean in means.items() if mean.mean is not None}, batches


@dataclass(frozen=True)
class _Known:
    """Channel statistics of a graph value; ``flat`` when the channels are its last dim of two."""

    statistics: ChannelStatistics
    flat: bool


def _derived_input_means(gm, layers: dict) -> dict[str, torch.Tensor]:
    """The input mean of every layer in ``layers`` that follows from folded BatchNorm statistics
    along ``gm``'s graph (none when the sim is not a torch.fx graph)."""
    if not isinstance(gm, fx.GraphModule):
        return {}
    known: dict[fx.Node, _Known | None] = {}
    means = {}
    for node in gm.graph.nodes:
        known[node] = _statistics_of(gm, node, known)
        if node.op == "call_module" and node.target in layers and node.args:
            source = known.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
            layer = layers[node.target].layer
            linear = isinstance(layer, nn.Linear)
            channels = layer.in_features if linear else layer.in_channels
            if source is not None and source.flat == linear and source.statistics.mean.numel() == channels:
                means[node.target] = source.statistics.mean
    return means


def _statistics_of(gm: fx.GraphModule, node: fx.Node, known: dict) -> _Known | None:
    """What follows for ``node``'s output from what is known of the nodes before it."""
    first = known.get(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        layer = module.layer if isinstance(module, WeightQuantized) else module
        recorded = getattr(layer, "folded_batchnorm", None)
        if isinstance(recorded, FoldedBatchNorm):
            mean, std = recorded.moments(layer)
            return _Known(ChannelStatistics(mean, std), isinstance(layer, nn.Linear))
        if isinstance(module, IntegerAdd):
            return _sum(known, node)
        if first is None:
            return None
        if isinstance(module, _PASS_MODULES):
            return first
        if isinstance(module, nn.Hardtanh):  # ReLU6 too
            return _clamped(first, module.min_val, module.max_val)
        if isinstance(module, nn.ReLU):
            return _clamped(first, 0.0)
        if isinstance(module, _AVERAGE_MODULES):
            return _Known(first.statistics.mean_only(), first.flat)
        if isinstance(module, nn.Flatten) and module.start_dim == 1:
            return _Known(first.statistics, True)
        return None
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return _sum(known, node)
    if first is None or node.op not in ("call_function", "call_method"):
        return None
    target = node.target
    if target in _RELU_FUNCTIONS or target in ("relu", "relu_"):
        return _clamped(first, 0.0)
    if target is F.relu6:
        return _clamped(first, 0.0, 6.0)
    if target is F.dropout:
        return first
    if target in _AVERAGE_FUNCTIONS:
        return _Known(first.statistics.mean_only(), first.flat)
    if target in (torch.flatten, "flatten") and node_arg(node, 1, "start_dim", 0) == 1:
        return _Known(first.statistics, True)
    return None


def _clamped(known: _Known, low: float, high: float = math.inf) -> _Known | None:
    statistics = known.statistics.clamped(low, high)
    return None if statistics is None else _Known(statistics, known.flat)


def _sum(known: dict, node: fx.Node) -> _Known | None:
    if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
        return None
    a, b = known.get(node.args[0]), known.get(node.args[1])
    if a is None or b is None or a.flat != b.flat:
        return None
    total = a.statistics.plus(b.statistics)
    return None if total is None else _Known(total, a.flat)
