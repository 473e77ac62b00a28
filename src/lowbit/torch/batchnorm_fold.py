"""Fold BatchNorm layers into the convolution or linear layer that feeds them."""

from __future__ import annotations

import torch
from torch import fx, nn

from lowbit.torch.capture import trace_for

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module, example_input) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a Conv/ConvTranspose/Linear (whose output feeds
    only that BatchNorm) into it, in place; the BatchNorm becomes Identity. Returns (layer, bn) pairs."""
    graph_module = trace_for("fold_batchnorm", model, example_input)
    pairs = []
    for node in graph_module.graph.nodes:
        layer_path, bn_path = _layer_and_batchnorm(graph_module, node)
        if layer_path is None:
            continue
        layer, batchnorm = model.get_submodule(layer_path), model.get_submodule(bn_path)
        fold_into(layer, batchnorm)
        model.set_submodule(bn_path, nn.Identity())
        pairs.append((layer_path, bn_path))
    return pairs


def _layer_and_batchnorm(gm: fx.GraphModule, node: fx.Node):
    if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _BATCHNORMS):
        return None, None
    source = node.args[0]
    if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
        return None, None
    if not isinstance(gm.get_submodule(source.target), _FOLDABLE):
        return None, None
    uses = sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target in (node.target, source.target))
    return (source.target, node.target) if uses == 2 else (None, None)


@torch.no_grad()
def fold_into(layer: nn.Module, batchnorm: nn.Module) -> None:
    """Scale ``layer``'s output channels and shift its bias so it computes batchnorm(layer(x))."""
    factor = batchnorm.weight / torch.sqrt(batchnorm.running_var + batchnorm.eps) \
        if batchnorm.affine else 1.0 / torch.sqrt(batchnorm.running_var + batchnorm.eps)
    shift = batchnorm.bias if batchnorm.affine else torch.zeros_like(batchnorm.running_mean)
    weight = layer.weight
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        grouped = weight.reshape(layer.groups, weight.shape[0] // layer.groups, weight.shape[1], -1)
        per_group = factor.reshape(layer.groups, 1, weight.shape[1], 1)
        weight.copy_((grouped * per_group).reshape(weight.shape))
    else:
        weight.mul_(factor.reshape([-1] + [1] * (weight.dim() - 1)))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(batchnorm.running_mean)
    new_bias = (bias - batchnorm.running_mean) * factor + shift
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias)
    else:
        layer.bias.copy_(new_bias)
