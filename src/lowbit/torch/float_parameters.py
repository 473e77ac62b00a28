"""The float weight and bias a sim simulates, kept where a technique writes rounded (AdaRound) or corrected (bias
correction) values into a layer, so that the float model (QAT's default teacher) stays the float model."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from lowbit.quant.quantizer import Quantizer
from lowbit.torch.batchnorm_fold import fold_into
from lowbit.torch.weight_quantized import WeightQuantized


def float_copy(model: nn.Module) -> nn.Module:
    """A copy of a sim's model with every quantizer off and each layer's float weight and bias back: the float
    model it simulates, also after AdaRound or bias correction wrote into its layers."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, Quantizer):
            module.mode = "off"
        elif isinstance(module, WeightQuantized) and module.float_parameters is not None:
            restore_float_parameters(module.layer, module.float_parameters)
    return model


@contextmanager
def float_where_off(model: nn.Module):
    """Within the block, each layer whose weight quantizer is off computes with its kept float weight and bias
    (AdaRound's rounding and bias correction's shift undone), as the float model does."""
    swapped = []
    try:
        for module in model.modules():
            if (isinstance(module, WeightQuantized) and module.float_parameters is not None
                    and module.weight_quantizer.mode == "off"):
                for name, value in module.float_parameters.items():
                    parameter = getattr(module.layer, name)
                    swapped.append((parameter, parameter.data))
                    parameter.data = value
                if "bias" not in module.float_parameters and module.layer.bias is not None:
                    swapped.append((module.layer.bias, module.layer.bias.data))
                    module.layer.bias.data = torch.zeros_like(module.layer.bias)
        yield
    finally:
        for parameter, data in swapped:
            parameter.data = data  # the same storage and version: caches of the frozen forms stay valid


def keep_float_parameters(wrapper) -> None:
    """Remember the wrapped layer's weight and bias as they are now, unless remembered before: call it before a
    technique first overwrites them."""
    if wrapper.float_parameters is None:
        layer = wrapper.layer
        wrapper.float_parameters = {name: getattr(layer, name).detach().clone() for name in ("weight", "bias")
                                    if getattr(layer, name, None) is not None}


def fold_float_parameters(wrapper, batchnorm: nn.Module) -> None:
    """Fold ``batchnorm`` into the remembered float parameters too, as it is folded into the layer."""
    if wrapper.float_parameters is not None:
        layer = float_layer(wrapper.layer, wrapper.float_parameters)
        fold_into(layer, batchnorm)
        wrapper.float_parameters = {"weight": layer.weight.detach().clone(), "bias": layer.bias.detach().clone()}


@torch.no_grad()
def float_layer(layer: nn.Module, parameters: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``layer`` with ``parameters`` written in (a bias added since, by bias correction, becomes zero)."""
    layer = copy.deepcopy(layer)
    restore_float_parameters(layer, parameters)
    return layer


@torch.no_grad()
def restore_float_parameters(layer: nn.Module, parameters: dict[str, torch.Tensor]) -> None:
    """Write ``parameters`` into ``layer`` in place; a bias it has that ``parameters`` lack becomes zero."""
    layer.weight.copy_(parameters["weight"])
    if layer.bias is not None:
        layer.bias.copy_(parameters["bias"] if "bias" in parameters else torch.zeros_like(layer.bias))
