"""What each layer of an OnnxQuantSim costs: one sample run through the float graph in onnxruntime gives
every layer's output size; MACs follow from the weights."""

from __future__ import annotations

import math

from onnx import numpy_helper

from lowbit.onnx.attributes import attribute
from lowbit.onnx.graph_values import graph_values


def layer_costs(sim, groups, args, kwargs) -> dict[str, tuple[int, int, int]]:
    """(MACs, weights, output elements) per layer group, from the float graph run on one sample."""
    nodes = {node.name: node for node in sim.model.graph.node}
    initializers = {t.name: t for t in sim.model.graph.initializer}
    read = {group.name: sim.point(group.activations[-1]).tensor for group in groups if group.activations}
    produced = {group.name: nodes[group.name].output[0] for group in groups if group.weights}
    names = sorted(set(read.values()) | set(produced.values()))
    values = graph_values(sim.model, names, sim.inputs.feeds(args, kwargs), sim.threads)
    costs = {}
    for group in groups:
        outputs = values[read[group.name]].numel() if group.name in read else 0
        macs = weights = 0
        if group.weights:
            weight = numpy_helper.to_array(initializers[sim.point(group.weights[0]).module])
            macs = values[produced[group.name]].numel() * _macs_per_output(nodes[group.name], weight.shape)
            weights = weight.size
        costs[group.name] = (macs, weights, outputs)
    return costs


def _macs_per_output(node, shape) -> int:
    """Multiply-accumulates per output element: the weights one output element reads."""
    if node.op_type == "ConvTranspose":
        return shape[0] // attribute(node, "group", 1) * math.prod(shape[2:])
    if node.op_type == "Conv":
        return math.prod(shape[1:])
    if node.op_type == "Gemm" and attribute(node, "transB", 0):
        return shape[1]
    return shape[-2] if node.op_type in ("Gemm", "MatMul") and len(shape) >= 2 else 0
