"""Fold BatchNormalization into the Conv, ConvTranspose, Gemm or 2-D MatMul before it, in an ONNX graph; also
BatchNorm written as a per-channel Mul and Add by constants (as tf2onnx leaves it after depthwise convolutions)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from lowbit.onnx.attributes import attribute, set_attributes
from lowbit.onnx.calibrate import tensor_ranks
from lowbit.onnx.graph_view import GraphFacts, weight_axis
from lowbit.qdq.graph_index import remove_unused

FOLDABLE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def fold_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, str]]]:
    """A copy of ``model`` (as load_model returns it) with every foldable BatchNormalization folded
    into its producer, and the (layer, batchnorm) node names folded; outputs keep their names."""
    result, folded, _ = fold_with_statistics(model)
    return result, folded


def fold_with_statistics(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[tuple[str, str]], dict]:
    """As :func:`fold_batchnorm`, plus each folded layer's output statistics: its output tensor name →
    (β, |γ|), the per-channel mean and standard deviation the BN gave its output (float64 tensors)."""
    result = copy.deepcopy(model)
    graph = result.graph
    folded, statistics = [], {}
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        facts = GraphFacts(result)
        layer = facts.producer.get(bn.input[0])
        if layer is None or not _foldable(facts, layer, bn, tensor_ranks(result)):
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(facts.initializers[n]).astype(np.float64)
                                  for n in bn.input[1:5])
        scale = gamma / np.sqrt(var + attribute(bn, "epsilon", 1e-5))  # BN as y = scale · x + shift per channel
        _fold_into(graph, facts, layer, bn, scale, beta - mean * scale)
        folded.append((layer.name, bn.name))
        statistics[bn.output[0]] = (torch.from_numpy(beta), torch.from_numpy(gamma).abs())
    folded += _fold_affine(result)
    remove_unused(graph)
    return onnx.shape_inference.infer_shapes(result), folded, statistics


def _fold_affine(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """Fold each Mul, Add or Sub of a per-channel constant that alone reads a foldable layer's output into the layer, in
    place (repeated, so Mul then Add both fold); the (layer, node) names folded."""
    graph, folded = model.graph, []
    while True:
        facts, ranks = GraphFacts(model), tensor_ranks(model)
        found = next(((node, layer, vector) for node in graph.node if node.op_type in ("Mul", "Add", "Sub")
                      for layer, vector in [_affine_operand(facts, node, ranks)] if layer is not None), None)
        if found is None:
            return folded
        node, layer, vector = found
        ones, zeros = np.ones_like(vector), np.zeros_like(vector)
        shift = -vector if node.op_type == "Sub" else vector
        _fold_into(graph, facts, layer, node, *((vector, zeros) if node.op_type == "Mul" else (ones, shift)))
        folded.append((layer.name, node.name))


def _affine_operand(facts: GraphFacts, node: onnx.NodeProto, ranks: dict[str, int]):
    """(layer, per-channel float64 vector) when ``node`` multiplies or adds a constant that varies only along the
    output channels of the foldable layer it alone reads; (None, None) otherwise."""
    for data, constant in ((0, 1), (1, 0))[:1 if node.op_type == "Sub" else 2]:  # c − x is no affine fold here
        layer = facts.producer.get(node.input[data])
        tensor = facts.initializers.get(node.input[constant])
        if layer is None or tensor is None or layer.op_type not in FOLDABLE:
            continue
        if len(facts.consumers[node.input[data]]) != 1:
            continue
        if node.input[data] in facts.graph_outputs or len(layer.input) < 2 or layer.input[1] not in facts.initializers:
            continue
        rank = ranks.get(node.input[data])
        if layer.op_type == "ConvTranspose" or (layer.op_type == "Gemm" and attribute(layer, "transA", 0)):
            continue  # ConvTranspose's groups: not worth the case
        if layer.op_type == "MatMul" and not (len(facts.initializers[layer.input[1]].dims) == rank == 2):
            continue  # a batched MatMul's channels are not its output's axis 1
        weight = facts.initializers[layer.input[1]]
        channels = weight.dims[weight_axis(layer, weight)]
        value = numpy_helper.to_array(tensor).astype(np.float64)
        if rank is None or value.ndim > rank or (layer.input[2:] and layer.input[2] not in facts.initializers):
            continue
        shape = (1,) * (rank - value.ndim) + value.shape
        if all(size == 1 for axis, size in enumerate(shape) if axis != 1) and shape[1] in (1, channels):
            return layer, np.broadcast_to(value.reshape(-1), (channels,)).copy()
    return None, None


def _foldable(facts: GraphFacts, layer: onnx.NodeProto, bn: onnx.NodeProto, ranks: dict[str, int]) -> bool:
    """An inference-mode BN with constant statistics, alone reading a weighted layer with a constant
    weight (ConvTranspose: one group; Gemm/MatMul: 2-D output, so BN's channel axis is the last)."""
    if layer.op_type not in FOLDABLE or len(bn.output) != 1 or len(facts.consumers[layer.output[0]]) != 1:
        return False
    if layer.output[0] in facts.graph_outputs or not all(i in facts.initializers for i in bn.input[1:5]):
        return False
    if len(layer.input) < 2 or layer.input[1] not in facts.initializers:
        return False
    if len(layer.input) > 2 and layer.input[2]:
        bias = facts.initializers.get(layer.input[2])
        channels = numpy_helper.to_array(facts.initializers[bn.input[1]]).size
        if bias is None or int(np.prod(bias.dims)) not in (1, channels):
            return False
    if layer.op_type in ("Gemm", "MatMul"):
        return (len(facts.initializers[layer.input[1]].dims) == ranks.get(layer.output[0]) == 2
                and not (layer.op_type == "Gemm" and attribute(layer, "transA", 0)))
    return layer.op_type != "ConvTranspose" or attribute(layer, "group", 1) == 1


def _fold_into(graph: onnx.GraphProto, facts: GraphFacts, layer: onnx.NodeProto, folded: onnx.NodeProto, scale,
               shift) -> None:
    """Scale the layer's weight along its output channels, give it the folded bias, and have it write the output of
    ``folded`` (removed from the graph)."""
    stored = numpy_helper.to_array(facts.initializers[layer.input[1]])
    weight, dtype = stored.astype(np.float64), stored.dtype
    if layer.op_type == "Gemm":
        weight = weight * attribute(layer, "alpha", 1.0)
    axis = weight_axis(layer, facts.initializers[layer.input[1]])  # MatMul: 1 (a 2-D weight, see _foldable)
    old_bias = _old_bias(facts, layer, len(shift))
    shape = [-1 if i == axis else 1 for i in range(weight.ndim)]
    taken = {t.name for t in graph.initializer}
    weight_name = _free_name(f"{layer.input[1]}_bn_folded", taken)
    bias_name = _free_name(f"{layer.name or layer.output[0]}_bn_folded_bias", taken)
    graph.initializer.extend([numpy_helper.from_array((weight * scale.reshape(shape)).astype(dtype), weight_name),
                              numpy_helper.from_array((old_bias * scale + shift).astype(dtype), bias_name)])
    layer.input[1] = weight_name
    if layer.op_type == "MatMul":
        layer.op_type = "Gemm"
    if layer.op_type == "Gemm":
        set_attributes(layer, alpha=1.0, beta=1.0)
    if len(layer.input) > 2:
        layer.input[2] = bias_name
    else:
        layer.input.append(bias_name)
    for value in [v for v in graph.value_info if v.name == layer.output[0]]:
        graph.value_info.remove(value)
    layer.output[0] = folded.output[0]
    graph.node.remove(folded)


def _free_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name`` with the first numeric suffix no initializer has."""
    return name if name not in taken else next(f"{name}_{i}" for i in range(1, len(taken) + 2)
                                               if f"{name}_{i}" not in taken)


def _old_bias(facts: GraphFacts, layer: onnx.NodeProto, channels: int) -> np.ndarray:
    """The layer's bias as a [channels] float64 vector (zeros when it has none; Gemm: beta · C)."""
    if len(layer.input) < 3 or not layer.input[2]:
        return np.zeros(channels)
    bias = numpy_helper.to_array(facts.initializers[layer.input[2]]).astype(np.float64)
    if layer.op_type == "Gemm":
        bias = bias * attribute(layer, "beta", 1.0)
    return np.broadcast_to(bias.reshape(-1), (channels,)).copy()
