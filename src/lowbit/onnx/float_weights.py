"""The float weights of an ONNX sim whose layers AdaRound (rounded weights) or bias correction (shifted biases)
rewrote: the model as it was before, and copies of the current model with chosen layers' weights and biases
restored from it."""

from __future__ import annotations

import copy

import onnx
import torch

from lowbit.onnx.graph_view import GraphFacts
from lowbit.onnx.layers import weighted_layer


def with_float_weights(model: onnx.ModelProto, float_model: onnx.ModelProto | None,
                       nodes: frozenset[str]) -> onnx.ModelProto:
    """``model``, or a copy of it where each layer named in ``nodes`` has the weight and bias it has in
    ``float_model`` (a bias added since becomes zero); ``model`` itself when there is nothing to restore."""
    if float_model is None or not nodes:
        return model
    restored = copy.deepcopy(model)
    facts, float_facts = GraphFacts(restored), GraphFacts(float_model)
    float_nodes = {node.name: node for node in float_model.graph.node}
    for node in [n for n in restored.graph.node if n.name in nodes and n.name in float_nodes]:
        layer, kept = weighted_layer(facts, node), weighted_layer(float_facts, float_nodes[node.name])
        if layer is None or kept is None:
            continue
        layer.weight = kept.weight
        if layer.bias is not None:
            layer.bias = kept.bias if kept.bias is not None else torch.zeros_like(layer.bias)
        layer.write(restored.graph, facts)
    return restored
