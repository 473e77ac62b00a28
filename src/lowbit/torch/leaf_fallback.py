"""Fallback when torch.fx cannot trace: quantize weights and outputs of leaf modules."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.quant.quantizer import Quantizer
from lowbit.target import PASSTHROUGH_OPS, Target
from lowbit.torch.layer_wrapper import LayerWrapper
from lowbit.torch.op_types import WEIGHTED_OP_TYPES, module_op_type
from lowbit.target.points import QuantPoint, activation_spec, weight_spec
from lowbit.torch.weight_quantized import WeightQuantized


class OutputQuantized(LayerWrapper):
    """Runs ``layer`` then quantizes its (tensor) output."""

    def __init__(self, layer: nn.Module, output_quantizer: Quantizer):
        super().__init__(layer)
        self.output_quantizer = output_quantizer

    def forward(self, *args, **kwargs):
        return self.output_quantizer(self.layer(*args, **kwargs))


class InputQuantized(LayerWrapper):
    """Quantizes the (first, float) input of ``layer`` before running it."""

    def __init__(self, layer: nn.Module, input_quantizer: Quantizer):
        super().__init__(layer)
        self.input_quantizer = input_quantizer

    def forward(self, x, *args, **kwargs):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            x = self.input_quantizer(x)
        return self.layer(x, *args, **kwargs)


def _followed_in_group(types: list[str], index: int, target: Target) -> bool:
    """Whether sibling ``index`` starts or continues a supergroup with the next sibling."""
    pair = tuple(types[index:index + 2])
    return any(pair in zip(group, group[1:]) for group in target.supergroups)


def wrap_leaf_modules(model: nn.Module, target: Target, scheme: str):
    """Wrap every quantizable leaf of ``model`` in place; returns (model, points, quantizers)."""
    points, quantizers = [], {}

    def add(point: QuantPoint) -> Quantizer:
        """Record ``point`` and return the new quantizer made for it."""
        points.append(point)
        quantizers[point.key] = Quantizer(point.spec, scheme)
        return quantizers[point.key]

    leaves = [(name, module) for name, module in model.named_modules() if name and not list(module.children())]
    siblings = {}
    for name, _ in leaves:
        siblings.setdefault(name.rpartition(".")[0], []).append(name)
    types = {name: module_op_type(module) for name, module in leaves}
    for name, module in leaves:
        op_type = types[name]
        if op_type in PASSTHROUGH_OPS:
            continue
        rule = target.op(op_type)
        wrapped = module
        spec = weight_spec(rule, op_type, strict=target.strict_symmetric) if op_type in WEIGHTED_OP_TYPES else None
        if spec is not None:
            weight_point = QuantPoint(f"{name}.weight", "weight", name, op_type, spec, module=name)
            wrapped = WeightQuantized(wrapped, add(weight_point))
        if rule.input_quantized and rule.activation.dtype == "int":
            quantizer = add(QuantPoint(name.replace(".", "_") + "_input0", "input", name, op_type,
                                       activation_spec(rule, target), argument="input"))
            if isinstance(wrapped, WeightQuantized):
                wrapped.link_input_quantizer(quantizer)
            wrapped = InputQuantized(wrapped, quantizer)
        group = siblings[name.rpartition(".")[0]]
        fused = _followed_in_group([types[s] for s in group], group.index(name), target)
        if rule.output_quantized and not fused and rule.activation.dtype == "int":
            output_point = QuantPoint(name.replace(".", "_"), "output", name, op_type, activation_spec(rule, target),
                                      constraints=rule.encoding_constraints)
            wrapped = OutputQuantized(wrapped, add(output_point))
        if wrapped is not module:
            model.set_submodule(name, wrapped)
    return model, points, quantizers
