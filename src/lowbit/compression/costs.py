"""Multiply-accumulates and parameters of a model's convolutions and Linear layers, counted on one sample."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.data import as_call
from lowbit.torch.eval_mode import eval_mode

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear) + _TRANSPOSED


@dataclass(frozen=True)
class Costs:
    """``macs`` of the layers and ``params`` of the whole model, per sample; ``layers``: name → (MACs, params);
    ``inputs``: name → the shape of the layer's first input."""

    macs: int
    params: int
    layers: dict[str, tuple[int, int]]
    inputs: dict[str, torch.Size]


def _per_sample(x: torch.Tensor) -> int:
    return x[0].numel() if x.dim() > 1 else x.numel()


def layer_macs(layer: nn.Module, x: torch.Tensor, output: torch.Tensor) -> int:
    """MACs of one sample through ``layer``: each output value sums one window of inputs (a transposed
    convolution: each input value scatters into one window of outputs)."""
    if isinstance(layer, nn.Linear):
        return _per_sample(output) * layer.in_features
    return (_per_sample(x) if isinstance(layer, _TRANSPOSED) else _per_sample(output)) * layer.weight[0].numel()


@torch.no_grad()
def model_costs(model: nn.Module, example_input) -> Costs:
    """The MACs of every convolution and Linear of ``model`` on the first sample of ``example_input`` (run in eval
    mode, the model's modes restored), and its parameter count."""
    args, kwargs = as_call(example_input)
    layers: dict[str, tuple[int, int]] = {}
    shapes: dict[str, torch.Size] = {}

    def count(name: str, layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        macs = layers.get(name, (0, 0))[0] + layer_macs(layer, inputs[0], output)
        layers[name] = (macs, sum(p.numel() for p in layer.parameters(recurse=False)))
        shapes.setdefault(name, inputs[0].shape)

    hooks = [module.register_forward_hook(lambda m, i, o, name=name: count(name, m, i, o))
             for name, module in model.named_modules() if isinstance(module, _LAYERS)]
    try:
        with eval_mode(model):
            model(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return Costs(sum(macs for macs, _ in layers.values()), sum(p.numel() for p in model.parameters()), layers, shapes)
