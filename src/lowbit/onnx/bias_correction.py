"""Empirical bias correction of an OnnxQuantSim: each layer's input mean is measured in onnxruntime on the QDQ graph,
reduced inside it; ``lowbit.algorithms.bias_correction`` turns it into the bias update."""

from __future__ import annotations

import numpy as np
import torch
from onnx import helper, numpy_helper

from lowbit.algorithms.bias_correction import BiasCorrectionResult, correct_bias_, expected_output_shift, keeps_bias
from lowbit.errors import DataError, NotCalibratedError
from lowbit.onnx.calibrate import add_reduction
from lowbit.onnx.layers import WeightedLayer, weighted_layer
from lowbit.onnx.graph_view import GraphFacts
from lowbit.progress import progress
from lowbit.quant.fake_quant import fake_quantize
from lowbit.runtime import session

_SUM, _SHAPE = "_lowbit_channel_sum", "_lowbit_input_shape"


def correct_bias(sim, data, num_batches: int | None = None, transform=None) -> BiasCorrectionResult:
    """Empirical bias correction in place on ``sim``'s weight-quantized Conv, Gemm, MatMul: ``bias −= (W_q − W) E[x]``
    with E[x] from the fully simulated graph before any correction; layers it cannot correct are skipped and named."""
    if not sim.is_calibrated:
        raise NotCalibratedError("bias correction needs a calibrated sim: call sim.calibrate(data) first")
    facts = GraphFacts(sim.model)
    nodes = {node.name: node for node in facts.graph.node}
    layers: list[WeightedLayer] = []
    skipped = []
    quantizers = sim.quantizers()
    for point in [p for p in sim.points if p.role == "weight"]:
        layer = None if keeps_bias(quantizers[point.key]) else weighted_layer(facts, nodes[point.node])
        if layer is None or layer.ensure_bias() is None:
            skipped.append(point.node)
        else:
            layers.append(layer)
    feeds = sim.feeds_of(data, transform, num_batches)
    if not feeds:
        raise DataError("bias correction needs data: no batch was produced")
    means = _input_means(sim, layers, feeds) if layers else {}
    weights = {p.node: quantizers[p.key] for p in sim.points if p.role == "weight"}
    sim.keep_float_model()
    shifts = []
    for layer in layers:
        stored = layer.weight.T if layer.transposed else layer.weight  # the initializer's layout
        quantized = fake_quantize(stored.float(), weights[layer.name].encoding).to(torch.float64)
        error = quantized.T if layer.transposed else quantized
        shift = expected_output_shift(error - layer.weight, means[layer.name], layer.groups)
        correct_bias_(layer.bias, shift)
        layer.write(facts.graph, facts)
        shifts.append(shift.abs())
    sim.weights_changed()
    mean_shift = float(torch.cat(shifts).mean()) if shifts else 0.0
    return BiasCorrectionResult(tuple(layer.name for layer in layers), tuple(skipped), mean_shift, len(feeds))


def _input_means(sim, layers: list[WeightedLayer], feeds: list[dict]) -> dict[str, torch.Tensor]:
    """Per layer, E[x] per input channel of its input in the QDQ graph over every position of every batch, from the
    per-channel sums (ReduceSum) and shape the graph returns."""
    model = sim.split().qdq_model
    qdq_nodes = {node.name: node for node in model.graph.node}
    probe = type(model)()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    outputs = []
    for layer in layers:
        tensor = qdq_nodes[layer.name].input[0]
        if layer.node.op_type == "Conv":
            axes = [0, *range(2, layer.weight.dim())]
        else:
            shape = layer.name + _SUM + "_rows"
            probe.graph.initializer.append(numpy_helper.from_array(np.array([-1, layer.in_channels], np.int64), shape))
            probe.graph.node.append(helper.make_node("Reshape", [tensor, shape], [shape + "_view"]))
            tensor, axes = shape + "_view", [0]
        add_reduction(probe, "ReduceSum", tensor, axes, layer.name + _SUM)
        probe.graph.node.append(helper.make_node("Shape", [tensor], [layer.name + _SHAPE]))
        probe.graph.output.append(helper.make_empty_tensor_value_info(layer.name + _SHAPE))
        outputs += [layer.name + _SUM, layer.name + _SHAPE]
    runtime = session(probe.SerializeToString(), threads=sim.threads)
    totals = [torch.zeros(layer.in_channels, dtype=torch.float64) for layer in layers]
    counts = [0] * len(layers)
    for feed in progress(feeds, "bias correction", len(feeds)):
        values = runtime.run(outputs, feed)
        for index, layer in enumerate(layers):
            totals[index] += torch.from_numpy(values[2 * index]).to(torch.float64)
            counts[index] += int(np.prod(values[2 * index + 1])) // layer.in_channels
    return {layer.name: total / count for layer, total, count in zip(layers, totals, counts)}
