"""Turn a tagged Q/DQ export into the FP32 model, the encodings, and an integer QDQ model."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from lowbit.qdq.grid_clamp import clamp_to_grids
from lowbit.qdq.graph_index import GraphIndex, remove_unused, rename_tensors, strip_attribute
from lowbit.qdq.requantize import requantize_after_pools
from lowbit.qdq.storage import narrower_than_storage
from lowbit.qdq.weights import fold_transposed_weights, quantize_biases, quantize_weights
from lowbit.quant.encoding import Encoding

QUANTIZER_KEY_ATTRIBUTE = "lowbit_quantizer"
WIDE_WEIGHT_ATTRIBUTE = "lowbit_wide_weight"


@dataclass
class SplitGraph:
    """The three products of an export, plus each quantizer's tensor name in the graph."""

    float_model: onnx.ModelProto
    qdq_model: onnx.ModelProto
    activation_encodings: dict[str, Encoding]
    param_encodings: dict[str, Encoding]
    tensor_names: dict[str, str]


def split_exported_graph(model: onnx.ModelProto, quantizers: dict, renames: dict[str, str]) -> SplitGraph:
    """Read the quantizer tags, then build the FP32 and the integer QDQ models from ``model``."""
    rename_tensors(model.graph, renames)
    widen_weight_pairs(model.graph)
    retype_uint16_zero_points(model.graph)
    index = GraphIndex(model.graph)
    activation, params, names, pairs, grids = {}, {}, {}, [], {}
    for node in model.graph.node:
        key = strip_attribute(node, QUANTIZER_KEY_ATTRIBUTE) if node.op_type == "QuantizeLinear" else None
        if key is None:
            continue
        source, encoding = node.input[0], quantizers[key].encoding.to("cpu")
        weight = source in index.initializers
        (params if weight else activation)[source] = encoding
        names[key] = source
        (dequantize,) = index.consumers[node.output[0]]
        pairs.append((node, dequantize))
        if not weight and encoding.spec.axis is None and narrower_than_storage(encoding):
            grids[dequantize.output[0]] = encoding
    return SplitGraph(_float_model(model, pairs), _qdq_model(model, params, grids), activation, params, names)


def retype_uint16_zero_points(graph: onnx.GraphProto) -> None:
    """int32 zero-point constants of com.microsoft Q/DQ nodes become uint16 (how 16-bit unsigned
    encodings leave the exporter, which cannot write uint16 constants)."""
    index = GraphIndex(graph)
    retyped = set()
    for node in graph.node:
        if node.domain != "com.microsoft" or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        producer = index.producer.get(node.input[2])
        if producer is None or producer.op_type != "Constant" or node.input[2] in retyped:
            continue
        for attribute in producer.attribute:
            if attribute.name == "value" and attribute.t.data_type == onnx.TensorProto.INT32:
                values = numpy_helper.to_array(attribute.t).astype(np.uint16)
                attribute.t.CopyFrom(numpy_helper.from_array(values, attribute.t.name))
                retyped.add(node.input[2])
    stale = {name for node in graph.node if node.domain == "com.microsoft" for name in node.output}
    for value in [v for v in graph.value_info if v.name in stale]:
        graph.value_info.remove(value)


def widen_weight_pairs(graph: onnx.GraphProto) -> None:
    """Weight Q/DQ pairs the export wrote as standard 8-bit ones with their 16-bit type and zero points in
    an attribute (see lowbit.torch.onnx_qdq_op) become com.microsoft pairs with those zero points."""
    index = GraphIndex(graph)
    for node in list(graph.node):
        wide = strip_attribute(node, WIDE_WEIGHT_ATTRIBUTE) if node.op_type == "QuantizeLinear" else None
        if wide is None:
            continue
        type_name, zeros = wide.split(":")
        values = np.array([int(z) for z in zeros.split(",")], dtype=np.dtype(type_name))
        if not any(attribute.name == "axis" for attribute in node.attribute):
            values = values.reshape(())
        name = f"{node.output[0]}_zero_point"
        graph.initializer.append(numpy_helper.from_array(values, name))
        for pair_node in (node, *index.consumers[node.output[0]]):
            pair_node.domain = "com.microsoft"
            pair_node.input[2] = name


def _float_model(model: onnx.ModelProto, pairs) -> onnx.ModelProto:
    """``model`` with every tagged Q/DQ pair bypassed (DQ outputs that are graph outputs become Identity)."""
    result = copy.deepcopy(model)
    graph = result.graph
    outputs = {o.name for o in graph.output}
    bypass = {dq.output[0]: q.input[0] for q, dq in pairs}
    doomed = {q.output[0] for q, _ in pairs} | set(bypass)
    kept = [n for n in graph.node if not any(out in doomed for out in n.output)]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = bypass.get(name, name)
    kept.extend(onnx.helper.make_node("Identity", [bypass[name]], [name]) for name in bypass if name in outputs)
    del graph.node[:]
    graph.node.extend(kept)
    remove_unused(graph)
    return result


def _qdq_model(model: onnx.ModelProto, params: dict[str, Encoding], grids: dict[str, Encoding]) -> onnx.ModelProto:
    """``model`` with weights stored as integers, biases as int32, activations clamped to grids narrower than
    their stored type, and no tag attributes."""
    result = copy.deepcopy(model)
    clamp_to_grids(result.graph, grids)
    quantize_weights(result.graph, params)
    fold_transposed_weights(result.graph)
    requantize_after_pools(result.graph)
    quantize_biases(result.graph)
    remove_unused(result.graph)
    return result
