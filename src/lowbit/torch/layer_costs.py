"""What each layer of a QuantSim costs: one sample run through the sim gives every layer's output
size; MACs follow from the weights each output element reads."""

from __future__ import annotations

import torch

from lowbit.data import move_call
from lowbit.torch.weight_quantized import WeightQuantized


def layer_costs(sim, groups, args, kwargs) -> dict[str, tuple[int, int, int]]:
    """(MACs, weights, output elements) per layer group, from one sample run through the sim."""
    sizes: dict[str, tuple[int, int]] = {}
    hooks = []
    modules = dict(sim.model.named_modules())
    for group in groups:
        if group.weights:
            module = modules[sim.point(group.weights[0]).module]
            if isinstance(module, WeightQuantized):
                hooks.append(module.register_forward_hook(
                    lambda m, inputs, output, name=group.name: sizes.__setitem__(name, _macs(m.layer, output))))
    quantizers = sim.quantizers()
    outputs: dict[str, int] = {}
    for group in groups:
        for key in group.activations[-1:]:
            hooks.append(quantizers[key].register_forward_hook(
                lambda m, inputs, output, name=group.name: outputs.__setitem__(name, output[:1].numel())))
    args, kwargs = move_call(args, kwargs, sim._device())
    try:
        with torch.no_grad():
            sim.model(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return {group.name: (*sizes.get(group.name, (0, 0)), outputs.get(group.name, 0)) for group in groups}


def _macs(layer, output: torch.Tensor) -> tuple[int, int]:
    """(MACs for one sample, weight count): each output element costs one MAC per weight it reads."""
    weight = layer.weight
    per_output = weight[0].numel() if not isinstance(layer, torch.nn.Embedding) else 0
    if isinstance(layer, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
        per_output = weight.shape[0] // layer.groups * weight[0, 0].numel()
    samples = output.shape[0] if output.dim() > 1 else 1
    return output.numel() // samples * per_output, weight.numel()
