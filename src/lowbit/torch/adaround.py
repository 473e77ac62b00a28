"""AdaRound on a QuantSim: learn, block by block (or layer by layer) in call order, whether each
weight rounds up or down, so that the output on the quantized input matches the float model's."""

from __future__ import annotations

import time

import torch

from lowbit.algorithms.adaround_result import AdaroundResult, LayerRounding
from lowbit.algorithms.adaround_rows import DEFAULT_ITERATIONS, round_on_rows
from lowbit.algorithms.layer_rows import layer_groups
from lowbit.algorithms.row_cache import RowCache
from lowbit.errors import SpecError
from lowbit.graph.blocks import rounding_units
from lowbit.progress import progress
from lowbit.algorithms.block_rounding import round_block
from lowbit.torch.float_parameters import keep_float_parameters
from lowbit.torch.graph_blocks import block_module
from lowbit.torch.layer_activation import following_activation
from lowbit.torch.layer_inputs import layer_inputs_for, weight_skip_reason
from lowbit.torch.weight_quantized import WeightQuantized

def adaround(sim, data, num_iterations: int = DEFAULT_ITERATIONS, num_batches: int | None = None,
             transform=None, batch_rows: int = 1024, learning_rate: float = 1e-2, reg_weight: float = 0.01,
             warm_start: float = 0.2, max_rows: int = 16384, memory_limit: int = 512 << 20,
             seed: int = 0, granularity: str = "block", block_layers: int = 3,
             batch_samples: int = 16) -> AdaroundResult:
    """AdaRound (Nagel et al. 2020) on every weight-quantized Conv1d/Conv2d/Linear of a calibrated
    ``sim``, in place; the chosen roundings are written into the weights (on the grid) and their
    encodings frozen (``frozen_by="adaround"``), so calibration keeps them and export writes them like
    any other, and bias correction leaves the layers alone (``lowbit.algorithms.bias_correction``).

    ``granularity="block"`` (the default) rounds the layers of each graph block together (BRECQ's
    unit, Li et al. 2021: spans of the torch.fx graph between points where one value is live, merged
    up to ``block_layers`` layers, e.g. one MobileNetV2 inverted residual). Every sample's block
    input (the sim, earlier blocks already rounded) and float output (a float copy) is cached, in
    memory up to ``memory_limit`` bytes, past it on disk; the loss is the block's output error with
    its activation quantizers active, on ``batch_samples`` samples per iteration (fewer on large
    feature maps). Layers outside such blocks, and every layer of a sim without a graph, are rounded
    one by one.

    ``granularity="layer"``: up to ``max_rows`` output positions per layer, sampled evenly over
    ``data``, give rows of its quantized input and float output; errors are measured after the
    ReLU / ReLU6 that directly follows it (fused into it on export), on ``batch_rows`` rows per step.

    Both: Adam, the regulariser off for the first ``warm_start`` of the iterations and its exponent
    annealed from 20 to 2 after; a unit stops early once every rounding variable is exactly 0 or 1
    (nothing can change after), and keeps nearest rounding if that reconstructs its output better.
    """
    if num_iterations < 1 or batch_rows < 1 or max_rows < 1 or batch_samples < 1 or block_layers < 1:
        raise SpecError("num_iterations, batch_rows, max_rows, batch_samples and block_layers must be at least 1")
    if granularity not in ("layer", "block"):
        raise SpecError(f"adaround granularity must be 'layer' or 'block', not {granularity!r}")
    start = time.perf_counter()
    inputs = layer_inputs_for(sim, data, transform, num_batches, "adaround")
    order = inputs.layer_order()
    skipped = {name: "not reached by the first batch" for name, m in sim.model.named_modules()
               if isinstance(m, WeightQuantized) and name not in order}
    for name in order:
        reason = weight_skip_reason(sim.model.get_submodule(name))
        if reason is not None:
            skipped[name] = reason
    blocks = inputs.blocks(block_layers) if granularity == "block" else None
    units = rounding_units(blocks, [name for name in order if name not in skipped], block_layers)
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for names, block in progress(units, "adaround", len(units), unit=granularity):
        unit_start = time.perf_counter()
        for name in names:  # before the rounding is written into the weights
            keep_float_parameters(sim.model.get_submodule(name))
        if block is None:
            wrapper = sim.model.get_submodule(names[0])
            activation = following_activation(sim.model, names[0]) or torch.nn.Identity()
            with inputs.collect(names[0], max_rows, memory_limit, generator, "adaround inputs") as cache:
                iterations, nearest_mse, rounded_mse = _round_layer(
                    names[0], wrapper, cache, activation, num_iterations, batch_rows, learning_rate, reg_weight,
                    warm_start, generator)
        else:
            wrappers = [sim.model.get_submodule(name) for name in names]
            with inputs.collect_block(block, memory_limit, "adaround inputs") as cache:
                iterations, nearest_mse, rounded_mse = round_block(
                    "+".join(names), block_module(sim.model, block), wrappers, cache, num_iterations,
                    batch_samples, learning_rate, reg_weight, warm_start, generator)
        layers.append(LayerRounding(names, iterations, time.perf_counter() - unit_start, nearest_mse,
                                    rounded_mse))
    return AdaroundResult(tuple(layers), skipped, time.perf_counter() - start)


def _round_layer(name: str, wrapper: WeightQuantized, cache: RowCache, activation, iterations: int,
                 batch_rows: int, learning_rate: float, reg_weight: float, warm_start: float,
                 generator: torch.Generator) -> tuple[int, float, float]:
    """Learn the layer's rounding, write the better of it and nearest rounding into the weight, freeze
    the encoding; returns (iterations run, nearest MSE, kept MSE), errors measured after ``activation``."""
    layer, quantizer = wrapper.layer, wrapper.weight_quantizer
    bias = None if layer.bias is None else layer.bias.detach()
    kept, run, nearest_mse, kept_mse = round_on_rows(
        layer.weight.detach(), bias, layer_groups(layer), quantizer.encoding, cache, activation, iterations,
        batch_rows, learning_rate, reg_weight, warm_start, generator, f"at layer {name!r}")
    with torch.no_grad():
        layer.weight.copy_(kept)
    quantizer.freeze(quantizer.encoding, by="adaround")
    return run, nearest_mse, kept_mse
