"""Ops Keras's torch and JAX exports write where runtimes fuse others: ReLU6 as Max and Min (a Clip), an activation
after the transpose back to channels last (moved next to its convolution), a spatial ReduceMean (GlobalAveragePool)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from lowbit.onnx.attributes import attribute, reduce_axes
from lowbit.qdq.graph_index import GraphIndex, remove_unused


def min_max_as_clips(model: onnx.ModelProto) -> None:
    """Each Max by a scalar constant that a Min by a larger one alone reads (or the other way round) becomes one Clip,
    and a Max by 0 on its own a Relu: the activations the runtime fuses into a convolution (in place)."""
    index = GraphIndex(model.graph)
    bound = lambda node: _scalar_operand(node, index)
    replaced, nodes = set(), []
    for node in model.graph.node:
        if id(node) in replaced:
            continue
        if node.op_type not in ("Max", "Min") or bound(node) is None:
            nodes.append(node)
            continue
        readers = index.consumers.get(node.output[0], [])
        partner = readers[0] if len(readers) == 1 and {readers[0].op_type, node.op_type} == {"Max", "Min"} else None
        if partner is not None and bound(partner) is not None:
            low, high = sorted((bound(node), bound(partner)))
            names = [f"{partner.output[0]}.min", f"{partner.output[0]}.max"]
            model.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), n)
                                           for v, n in zip((low, high), names))
            nodes.append(onnx.helper.make_node("Clip", [_variable_operand(node, index), *names], [partner.output[0]],
                                               name=partner.name))
            replaced.add(id(partner))
        elif node.op_type == "Max" and bound(node) == 0:
            nodes.append(onnx.helper.make_node("Relu", [_variable_operand(node, index)], [node.output[0]],
                                               name=node.name))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    remove_unused(model.graph)


def _scalar_operand(node: onnx.NodeProto, index: GraphIndex) -> float | None:
    """The scalar constant of a two-input Max or Min whose other input is computed, else None."""
    if len(node.input) != 2:
        return None
    values = [index.constant(name) for name in node.input]
    known = [v for v in values if v is not None]
    return float(known[0].reshape(())) if len(known) == 1 and known[0].size == 1 else None


def _variable_operand(node: onnx.NodeProto, index: GraphIndex) -> str:
    return next(name for name in node.input if index.constant(name) is None)


def activations_before_transposes(model: onnx.ModelProto) -> int:
    """Swap each Transpose read only by a Relu or Clip with that activation (they commute), so a convolution's
    activation follows it directly; returns how many were swapped."""
    swapped = 0
    while (pair := _transpose_then_activation(model)) is not None:
        transpose, activation = (model.graph.node[i] for i in pair)
        source, between, result = transpose.input[0], transpose.output[0], activation.output[0]
        activation.input[0], activation.output[0] = source, between
        transpose.input[0], transpose.output[0] = between, result
        moved = onnx.NodeProto()
        moved.CopyFrom(transpose)
        transpose.CopyFrom(activation)
        activation.CopyFrom(moved)
        swapped += 1
    return swapped


def _transpose_then_activation(model: onnx.ModelProto) -> tuple[int, int] | None:
    """Positions of a Transpose and the Relu or Clip that alone reads it (not a graph output), if any."""
    index = GraphIndex(model.graph)
    outputs = {o.name for o in model.graph.output}
    position = {id(node): i for i, node in enumerate(model.graph.node)}
    for i, node in enumerate(model.graph.node):
        readers = index.consumers.get(node.output[0], []) if node.op_type == "Transpose" else []
        if len(readers) == 1 and readers[0].op_type in ("Relu", "Clip") and node.output[0] not in outputs:
            return i, position[id(readers[0])]
    return None


def spatial_means_as_global_pools(model: onnx.ModelProto) -> None:
    """Each ReduceMean over the two spatial axes of an NCHW tensor becomes GlobalAveragePool (then Flatten where it
    drops those axes): the op onnxruntime and LiteRT run as an integer mean (in place)."""
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    ranks.update({v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.input})
    index, nodes = GraphIndex(model.graph), []
    for node in model.graph.node:
        axes = _reduced_axes(node, index) if node.op_type == "ReduceMean" and ranks.get(node.input[0]) == 4 else None
        if axes != [2, 3]:
            nodes.append(node)
            continue
        if attribute(node, "keepdims", 1):
            nodes.append(onnx.helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]], name=node.name))
            continue
        pooled = f"{node.output[0]}.pooled"
        nodes.append(onnx.helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name))
        nodes.append(onnx.helper.make_node("Flatten", [pooled], [node.output[0]], name=f"{node.name}.flatten", axis=1))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    remove_unused(model.graph)


def _reduced_axes(node: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    """The sorted axes (of a 4-D input) a ReduceMean averages over."""
    axes = reduce_axes(node, index.constant)
    return None if axes is None else sorted(a % 4 for a in axes)
