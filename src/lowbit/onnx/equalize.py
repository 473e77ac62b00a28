"""Cross-layer equalization (CLE) of an ONNX graph: chains of Conv/Gemm nodes found in the graph,
scaled by the math in ``lowbit.algorithms.cross_layer_equalization``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx

from lowbit.algorithms.cross_layer_equalization import (EqualizedGroup, absorb_high_bias_, absorbable_shift,
                                                        equalize_chain_)
from lowbit.onnx.attributes import clip_bounds
from lowbit.onnx.batchnorm_fold import fold_with_statistics
from lowbit.onnx.layers import WeightedLayer, weighted_layer
from lowbit.onnx.load import load_model
from lowbit.onnx.plan import GraphFacts
from lowbit.qdq.graph_index import remove_unused

_LINEAR = ("Identity", "Dropout", "LeakyRelu")
"""Positive-homogeneous ops scaling passes through unchanged (besides Relu)."""


def equalize(model, absorb_high_bias: bool = True) -> tuple[onnx.ModelProto, list[EqualizedGroup]]:
    """Cross-layer equalization (Nagel et al. 2019) of ``model`` (path or ModelProto): a copy with its
    BatchNorms folded and its layer chains equalized, and the groups equalized.

    Chains, scales and high-bias absorption are those of ``lowbit.equalize`` for PyTorch: Conv (one
    group or depthwise) and Gemm nodes whose output feeds only the next one, through Relu, LeakyRelu,
    Identity, Dropout or Clip(0, 6) — ReLU6, which becomes a Relu (FP32 outputs change where
    activations exceeded 6, as with the PyTorch front end) — and nothing else. High bias moves from a
    layer with a folded BatchNorm, through Relu, into a successor without padding.
    """
    result, _, statistics = fold_with_statistics(load_model(model))
    facts = GraphFacts(result)
    groups = []
    for chain, links in _chains(facts):
        for link in links:
            for clip in link.relu6:
                _to_relu(clip)
        biases = [layer.ensure_bias() for layer in chain]
        moments = [statistics.get(layer.node.output[0]) for layer in chain]
        factors, sweeps = equalize_chain_([layer.weight for layer in chain], biases,
                                          [layer.depthwise for layer in chain])
        moments = [None if m is None or k == len(chain) - 1 else (m[0] * factors[k], m[1] * factors[k])
                   for k, m in enumerate(moments)]
        absorbed = []
        for k, link in enumerate(links):
            nxt = chain[k + 1]
            if absorb_high_bias and link.relu and moments[k] is not None and nxt.zero_free():
                shift = absorbable_shift(*moments[k])
                if bool((shift > 0).any()):
                    absorb_high_bias_(biases[k], nxt.weight, nxt.ensure_bias(), shift, nxt.depthwise)
                    absorbed.append(chain[k].name)
        for layer in chain:
            layer.write(result.graph, facts)
        replaced = tuple(clip.name or clip.output[0] for link in links for clip in link.relu6)
        groups.append(EqualizedGroup(tuple(layer.name for layer in chain), replaced, tuple(absorbed), sweeps))
    remove_unused(result.graph)
    return result, groups


@dataclass
class _Link:
    relu6: list[onnx.NodeProto] = field(default_factory=list)
    relu: bool = False  # a Relu (or a Clip(0, 6) that becomes one) sits on the path


def _chains(facts: GraphFacts) -> list[tuple[list[WeightedLayer], list[_Link]]]:
    """Maximal chains of eligible layers, each linked to the next through a single-consumer path."""
    layers = {}
    for node in facts.graph.node:
        layer = weighted_layer(facts, node)
        if layer is not None and layer.node.op_type != "MatMul" and (layer.groups == 1 or layer.depthwise):
            layers[node.output[0]] = layer
    successor: dict[str, tuple[str, _Link]] = {}
    for key, layer in layers.items():
        link, tensor = _Link(), key
        while tensor not in facts.graph_outputs and len(facts.consumers.get(tensor, [])) == 1:
            user = facts.consumers[tensor][0]
            if user.input[0] != tensor or tensor in user.input[1:]:
                break
            nxt = layers.get(user.output[0])
            if nxt is not None:
                if nxt.in_channels == layer.weight.shape[0]:
                    successor[key] = (user.output[0], link)
                break
            step = _passes(facts, user)
            if step is None:
                break
            if step == "relu6":
                link.relu6.append(user)
            link.relu = link.relu or step in ("relu", "relu6")
            tensor = user.output[0]
    targets = {nxt for nxt, _ in successor.values()}
    chains = []
    for start in [k for k in successor if k not in targets]:
        chain, links, key = [layers[start]], [], start
        while key in successor:
            key, link = successor[key]
            chain.append(layers[key])
            links.append(link)
        chains.append((chain, links))
    return chains


def _passes(facts: GraphFacts, node: onnx.NodeProto) -> str | None:
    """How scaling passes through ``node``: "relu", "relu6" (a Clip(0, 6), to become a Relu),
    "linear", or None (it does not)."""
    if len([o for o in node.output if o]) != 1 and not (node.op_type == "Dropout" and _unused(facts, node.output[1:])):
        return None
    if node.op_type == "Relu":
        return "relu"
    if node.op_type in _LINEAR:
        return "linear"
    if node.op_type == "Clip":
        low, high = clip_bounds(facts.initializers, node)
        if low == 0 and high == math.inf:
            return "relu"
        if low == 0 and high == 6:
            return "relu6"
    return None


def _unused(facts: GraphFacts, names) -> bool:
    return all(not n or (n not in facts.consumers and n not in facts.graph_outputs) for n in names)


def _to_relu(node: onnx.NodeProto) -> None:
    """Turn a Clip node into a Relu (same name, input and output)."""
    node.op_type = "Relu"
    del node.input[1:]
    del node.attribute[:]

