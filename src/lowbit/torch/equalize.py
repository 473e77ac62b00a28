"""Cross-layer equalization (CLE) of a PyTorch model: torch.fx graph walking around the math in
``lowbit.algorithms.cross_layer_equalization``."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.algorithms.cross_layer_equalization import (EqualizedGroup, absorb_high_bias_, absorbable_shift,
                                                        equalize_chain_)
from lowbit.graph.chains import equalization_chains
from lowbit.torch.batchnorm_fold import FoldedBatchNorm, fold_batchnorm, unpadded
from lowbit.torch.capture import trace_for
from lowbit.torch.graph_view import fx_view
from lowbit.torch.pair_saturation import is_depthwise


def equalize(model: nn.Module, example_input, absorb_high_bias: bool = True) -> list[EqualizedGroup]:
    """Cross-layer equalization (Nagel et al. 2019), in place; returns the equalized groups.

    1. BatchNorm is folded (``lowbit.fold_batchnorm``); each layer that absorbed the BN after it keeps
       the BN's output statistics (``layer.folded_batchnorm``), which step 5 follows through the scaling.
    2. Chains of Conv1d/2d/3d/Linear layers are found in the torch.fx graph (``lowbit.graph.chains``,
       the ONNX front end's rule too) where each layer's output feeds only the next layer, through
       nothing but positive-homogeneous ops (ReLU, LeakyReLU, Identity, Dropout, or no op) and ReLU6.
       Layers must be ungrouped or depthwise (groups == channels).
    3. **ReLU6 → ReLU.** relu6(s·x) ≠ s·relu6(x), so scaling through ReLU6 is not exact. As AIMET does,
       every ReLU6 (or Hardtanh(0, 6)) *module* between two equalized layers is replaced by ``nn.ReLU``
       (named in ``relu6_replaced``): **this changes the FP32 model slightly** (activations are no longer
       clipped at 6; MobileNetV2's accuracy survives it). Functional relu6/hardtanh calls are not
       replaced; they end a chain.
    4. Each chain is equalized: per channel, s = sqrt(r1·r2)/r2 for every consecutive pair, swept
       until the scales converge (a pair in one sweep, Conv→depthwise→Conv triplets in a few).
       After CLE the function is unchanged (exactly, up to float rounding) given step 3.
    5. High-bias absorption (``absorb_high_bias``, paper §4.2.2): where layer k had a folded
       BatchNorm (β, γ), is followed by ReLU, and layer k+1 has no padding (1x1 conv, Linear),
       c = max(0, β' − 3|γ'|) (β', γ' scaled like layer k's outputs) moves from layer k's bias into
       layer k+1's bias. Approximate: exact only where the pre-activation stays ≥ c. Skipped after
       convs with padding (the padded zeros would not carry c).
    """
    model.eval()
    fold_batchnorm(model, example_input)
    gm = trace_for("equalize", model, example_input)

    groups = []
    for found in equalization_chains(fx_view(gm)):
        chain, links = [op.module for op in found.layers], found.links
        layers = [model.get_submodule(name) for name in chain]
        relu6 = tuple(op.module for link in links for op in link.relu6)
        for name in relu6:
            model.set_submodule(name, nn.ReLU())
        for layer in layers:
            if layer.bias is None:
                layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype,
                                                      device=layer.weight.device))
        folded = [getattr(layer, "folded_batchnorm", None) for layer in layers]
        moments = [None if stats is None else stats.moments(layer) for stats, layer in zip(folded, layers)]
        with torch.no_grad():
            factors, sweeps = equalize_chain_([layer.weight.data for layer in layers],
                                              [layer.bias.data for layer in layers],
                                              [is_depthwise(layer) for layer in layers])
            for layer, moment, factor in zip(layers, moments, factors):  # CLE scales inputs too: reset
                if moment is not None:
                    layer.folded_batchnorm = FoldedBatchNorm.of(layer, moment[0] * factor, moment[1] * factor)
            absorbed = []
            if absorb_high_bias:
                for k, link in enumerate(links):
                    nxt = layers[k + 1]
                    statistics = getattr(layers[k], "folded_batchnorm", None)
                    if not link.relu or statistics is None or not unpadded(nxt):
                        continue
                    mean, std = statistics.moments(layers[k])
                    shift = absorbable_shift(mean.to(nxt.weight.dtype), std.to(nxt.weight.dtype))
                    if bool((shift > 0).any()):
                        absorb_high_bias_(layers[k].bias.data, nxt.weight.data, nxt.bias.data, shift,
                                          is_depthwise(nxt))
                        absorbed.append(chain[k])
        groups.append(EqualizedGroup(tuple(chain), relu6, tuple(absorbed), sweeps))
    return groups
