"""Folding a trained sim's BatchNorms into the convolutions before them: the weights take the trained quantized
values times γ/σ and the per-channel weight scales take |γ/σ|, so the integers stay the ones trained."""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import SpecError
from lowbit.torch.batchnorm_fold import batchnorm_factor, fold_into, own_forward
from lowbit.torch.float_parameters import fold_float_parameters
from lowbit.torch.insert import link_output_quantizers
from lowbit.torch.weight_quantized import WeightQuantized

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def batchnorm_pairs(sim) -> list[tuple[str, str]]:
    """(layer, BatchNorm) module paths of every BatchNorm that alone reads a weight-quantized convolution;
    SpecError where that convolution's weights are quantized per tensor (folding would change its integers)."""
    if sim.capture_mode != "fx":
        return []
    gm = sim.model
    calls = [node for node in gm.graph.nodes if node.op == "call_module"]
    uses = Counter(node.target for node in calls)
    pairs = []
    for node in calls:
        source = node.args[0] if node.args else None
        if (not isinstance(gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm)
                or getattr(source, "op", None) != "call_module" or len(source.users) != 1
                or uses[node.target] + uses[source.target] != 2):
            continue
        wrapper, batchnorm = gm.get_submodule(source.target), gm.get_submodule(node.target)
        if not (isinstance(wrapper, WeightQuantized) and isinstance(wrapper.layer, _CONVOLUTIONS)
                and _folds_exactly(wrapper.layer, batchnorm)):
            continue
        quantizer, axis = wrapper.weight_quantizer, wrapper.weight_quantizer.spec.axis
        if quantizer.mode == "quantize" and (axis is None or axis % wrapper.layer.weight.dim()):
            raise SpecError(f"the BatchNorm {node.target!r} after {source.target!r} folds into its weight scales "
                            f"only where they are per output channel: quantize with per_channel=True, or with "
                            f"fold_batchnorm=True (the default) before training")
        pairs.append((source.target, node.target))
    return pairs


def _folds_exactly(layer: nn.Module, batchnorm: nn.Module) -> bool:
    """Whether folding keeps what ``layer`` then ``batchnorm`` compute: always for a torch convolution; checked on
    a random input for a subclass with its own forward (its padding may not commute with the fold)."""
    if not own_forward(layer):
        return True
    x = torch.randn(2, layer.in_channels, *[3 * k + 2 for k in layer.kernel_size], device=layer.weight.device)
    trial = copy.deepcopy(layer)
    fold_into(trial, batchnorm)
    try:
        with torch.no_grad():
            expected = F.batch_norm(layer(x), batchnorm.running_mean, batchnorm.running_var, batchnorm.weight,
                                    batchnorm.bias, False, 0.0, batchnorm.eps)
            got = trial(x)
    except (RuntimeError, TypeError, ValueError):
        return False
    return bool((got - expected).abs().max() <= 1e-5 * expected.abs().max())


@torch.no_grad()
def fold_batchnorm_to_scale(sim) -> list[tuple[str, str]]:
    """Fold each BatchNorm of :func:`batchnorm_pairs` (its running statistics) into its layer: weight ← quantized
    weight · γ/σ, bias ← (b − μ)·γ/σ + β, weight scale ← scale · |γ/σ|; the BatchNorm becomes Identity and the
    layer joins the quantizer after it, as in a sim built folded. Returns the pairs."""
    pairs = batchnorm_pairs(sim)
    for layer_path, bn_path in pairs:
        wrapper, batchnorm = sim.model.get_submodule(layer_path), sim.model.get_submodule(bn_path)
        quantizer = wrapper.weight_quantizer
        if quantizer.mode == "quantize":
            learning = quantizer.learning
            quantizer.learn_ranges(False)
            wrapper.layer.weight.copy_(quantizer(wrapper.layer.weight))
            factor = batchnorm_factor(batchnorm).abs()
            quantizer.scale.mul_(factor.reshape([-1] + [1] * (quantizer.scale.dim() - 1)))
            if learning:
                quantizer.learn_ranges()
        fold_float_parameters(wrapper, batchnorm)
        fold_into(wrapper.layer, batchnorm)
        sim.model.set_submodule(bn_path, nn.Identity())
    if pairs:
        link_output_quantizers(sim.model)
    return pairs
