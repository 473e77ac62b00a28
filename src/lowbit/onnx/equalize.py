"""Cross-layer equalization (CLE) of an ONNX graph: chains of Conv/Gemm nodes found in the graph,
scaled by the math in ``lowbit.algorithms.cross_layer_equalization``."""

from __future__ import annotations

import onnx

from lowbit.algorithms.cross_layer_equalization import (EqualizedGroup, absorb_high_bias_, absorbable_shift,
                                                        equalize_chain_)
from lowbit.graph.chains import equalization_chains
from lowbit.onnx.batchnorm_fold import fold_with_statistics
from lowbit.onnx.graph_view import GraphFacts
from lowbit.onnx.layers import weighted_layer
from lowbit.onnx.load import load_model
from lowbit.qdq.graph_index import remove_unused


def equalize(model, absorb_high_bias: bool = True) -> tuple[onnx.ModelProto, list[EqualizedGroup]]:
    """Cross-layer equalization (Nagel et al. 2019) of ``model`` (path or ModelProto): a copy with its BatchNorms
    folded and its layer chains equalized, and the groups equalized. Chains, scales and high-bias absorption are
    those of ``lowbit.equalize`` for PyTorch: a Clip(0, 6) in a chain becomes a Relu (FP32 outputs change where
    activations exceeded 6); high bias moves from a layer with a folded BN, through Relu, into one without padding."""
    result, _, statistics = fold_with_statistics(load_model(model))
    facts = GraphFacts(result)
    layers = {node.name: weighted_layer(facts, node) for node in facts.graph.node}
    nodes = {node.name: node for node in facts.graph.node}
    groups = []
    for found in equalization_chains(facts.view({k: v for k, v in layers.items() if v is not None})):
        chain, links = [layers[op.name] for op in found.layers], found.links
        relu6 = [nodes[op.name] for link in links for op in link.relu6]
        for clip in relu6:  # each becomes a Relu (same name, input and output)
            clip.op_type = "Relu"
            del clip.input[1:]
            del clip.attribute[:]
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
        replaced = tuple(clip.name for clip in relu6)
        groups.append(EqualizedGroup(tuple(layer.name for layer in chain), replaced, tuple(absorbed), sweeps))
    remove_unused(result.graph)
    return result, groups
