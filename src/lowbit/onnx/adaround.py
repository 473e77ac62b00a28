"""AdaRound and sequential MSE on an OnnxQuantSim: rows of each layer's quantized input and float output go to the
optimisations both front ends share (``lowbit.algorithms``); results land in the sim's weights and frozen encodings."""

from __future__ import annotations

import copy
import dataclasses
import time

import torch

from lowbit.algorithms.adaround_result import AdaroundResult, LayerRounding
from lowbit.algorithms.adaround_rows import DEFAULT_ITERATIONS, round_on_rows
from lowbit.algorithms.block_rounding import round_block
from lowbit.algorithms.layer_rows import rows_forward
from lowbit.algorithms.sequential_mse import (SequentialMSEResult, check_options, output_error,
                                              search_weight_encoding)
from lowbit.errors import DataError, NotCalibratedError, SpecError
from lowbit.graph.blocks import graph_blocks, rounding_units
from lowbit.onnx.block_run import OnnxBlock, runs_in_torch
from lowbit.onnx.layer_rows import LayerRows, following_activation, rows_unsupported
from lowbit.onnx.layers import WeightedLayer, weighted_layer
from lowbit.onnx.graph_view import GraphFacts
from lowbit.progress import progress
from lowbit.quant.encoding import Encoding
from lowbit.quant.fake_quant import fake_quantize


def adaround(sim, data, num_iterations: int = DEFAULT_ITERATIONS, num_batches: int | None = None,
             transform=None, batch_rows: int = 1024, learning_rate: float = 1e-2, reg_weight: float = 0.01,
             warm_start: float = 0.2, max_rows: int = 16384, memory_limit: int = 512 << 20,
             seed: int = 0, granularity: str = "block", block_layers: int = 3,
             batch_samples: int = 16) -> AdaroundResult:
    """AdaRound on a calibrated ONNX ``sim`` with ``lowbit.adaround``'s options and units: graph blocks run in torch
    (``lowbit.onnx.block_run``), other Conv/Gemm/MatMul layers one by one; rounded weights replace the initializers."""
    if num_iterations < 1 or batch_rows < 1 or max_rows < 1 or batch_samples < 1 or block_layers < 1:
        raise SpecError("num_iterations, batch_rows, max_rows, batch_samples and block_layers must be at least 1")
    if granularity not in ("layer", "block"):
        raise SpecError(f"adaround granularity must be 'layer' or 'block', not {granularity!r}")
    start = time.perf_counter()
    rows, layers, skipped, facts = _prepare(sim, data, transform, num_batches)
    sim.keep_float_model()
    generator = torch.Generator().manual_seed(seed)
    by_name = {layer.name: (layer, quantizer) for layer, quantizer in layers}
    nodes = {node.name: node for node in facts.graph.node}
    blocks = None
    if granularity == "block":  # the graph blocks whose nodes all run in torch
        blocks = graph_blocks(facts.view(), lambda op: op.name if op.name in by_name else None, block_layers)
        blocks = [block for block in blocks if runs_in_torch([nodes[name] for name in block.ops], facts.initializers)]
    units = rounding_units(blocks, list(by_name), block_layers)
    rounded = []
    for names, block in progress(units, "adaround", len(units), unit=granularity):
        unit_start = time.perf_counter()
        if block is None:
            layer, quantizer = by_name[names[0]]
            encoding = _in_layout(quantizer.encoding, layer)
            with rows.collect(layer, max_rows, memory_limit, generator, "adaround inputs") as cache:
                kept, run, nearest_mse, kept_mse = round_on_rows(
                    layer.weight.float(), None if layer.inner_bias is None else layer.inner_bias.float(), layer.groups,
                    encoding, cache, following_activation(facts, layer), num_iterations, batch_rows, learning_rate,
                    reg_weight, warm_start, generator, f"at layer {layer.name!r}")
            quantizer.freeze(quantizer.encoding, by="adaround")
            kept = [kept]
        else:
            module = OnnxBlock(block, names, [nodes[name] for name in block.ops], facts.initializers, sim)
            with rows.collect_block(block, memory_limit, "adaround inputs") as cache:
                run, nearest_mse, kept_mse = round_block("+".join(names), module, module.wrappers(), cache,
                                                         num_iterations, batch_samples, learning_rate, reg_weight,
                                                         warm_start, generator)
            kept = [slot.layer.weight.detach() for slot in module.wrappers()]
            kept = [w.T if by_name[name][0].transposed else w for name, w in zip(names, kept)]
        for name, weight in zip(names, kept):
            layer = by_name[name][0]
            layer.weight = weight.to(torch.float64).contiguous()
            layer.write(facts.graph, facts)
        sim.weights_changed()
        rounded.append(LayerRounding(names, run, time.perf_counter() - unit_start, nearest_mse, kept_mse))
    return AdaroundResult(tuple(rounded), skipped, time.perf_counter() - start)


def sequential_mse(sim, data, num_candidates: int = 20, loss: str = "mse", num_batches: int | None = None,
                   transform=None, max_rows: int = 4096, memory_limit: int = 1 << 30) -> SequentialMSEResult:
    """Sequential MSE on a calibrated ONNX ``sim`` (``lowbit.sequential_mse``'s search): per Conv, Gemm
    and MatMul in graph order, each output channel's weight range is chosen among ``num_candidates``
    shrunk ranges by the ``loss`` of the layer's output on rows of its quantized input; the choice is
    frozen into the weight quantizer. Activation encodings are left as calibrated."""
    check_options(loss, num_candidates, max_rows)
    start = time.perf_counter()
    rows, layers, skipped, _ = _prepare(sim, data, transform, num_batches)
    generator = torch.Generator().manual_seed(0)
    optimized, before, after = [], [], []
    for layer, quantizer in layers:
        weight = layer.weight.float()
        bias = None if layer.inner_bias is None else layer.inner_bias.float()
        layer_output = lambda inputs, quantized: rows_forward(inputs, quantized, bias, layer.groups)
        encoding = _in_layout(quantizer.encoding, layer)
        with rows.collect(layer, max_rows, memory_limit, generator, "sequential mse") as cache:
            current = output_error(fake_quantize(weight, encoding), lambda: cache.chunks("cpu"), layer_output)
            search = search_weight_encoding(weight, encoding.spec, lambda: cache.chunks("cpu"), layer_output,
                                            num_candidates, loss)
        quantizer.freeze(dataclasses.replace(search.encoding, spec=quantizer.spec), by="sequential_mse")
        sim.weights_changed()
        optimized.append(layer.name)
        before.append(current.mse)
        after.append(search.error.mse)
    return SequentialMSEResult(tuple(optimized), tuple(before), tuple(after), skipped, time.perf_counter() - start)


def _prepare(sim, data, transform, num_batches):
    """Rows collector, the (layer, weight quantizer) pairs to optimise in graph order, the skipped
    weight-quantized nodes with the reason, and the GraphFacts of ``sim.model`` the layers were read from."""
    if not sim.is_calibrated:
        raise NotCalibratedError("this technique needs a calibrated sim: call sim.calibrate(data) first")
    feeds = sim.feeds_of(data, transform, num_batches)
    if not feeds:
        raise DataError("no batch of data was produced")
    reference = copy.deepcopy(sim.float_model if sim.float_model is not None else sim.model)
    facts = GraphFacts(sim.model)
    quantizers = sim.quantizers()
    weights = {p.node: quantizers[p.key] for p in sim.points if p.role == "weight"}
    layers: list[tuple[WeightedLayer, object]] = []
    skipped: dict[str, str] = {}
    for node in facts.graph.node:
        if node.name not in weights:
            continue
        layer = weighted_layer(facts, node)
        reason = f"{node.op_type} is not a Conv, Gemm or MatMul with its own weight" if layer is None \
            else rows_unsupported(layer)
        if reason is None and weights[node.name].spec.axis not in (None, 1 if layer.transposed else 0):
            reason = f"per-channel weight encodings on axis {weights[node.name].spec.axis}, not the output channels"
        if reason is None:
            layers.append((layer, weights[node.name]))
        else:
            skipped[node.name] = reason
    return LayerRows(sim, feeds, reference), layers, skipped, facts


def _in_layout(encoding: Encoding, layer: WeightedLayer) -> Encoding:
    """``encoding`` for the weight in the techniques' layout (``[out, ...]``: axis 0 where per channel)."""
    if encoding.spec.axis is None or not layer.transposed:
        return encoding
    return dataclasses.replace(encoding, spec=dataclasses.replace(encoding.spec, axis=0))
