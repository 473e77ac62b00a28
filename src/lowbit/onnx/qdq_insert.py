"""Write a plan's calibrated quantizers into an ONNX graph as tagged QuantizeLinear → DequantizeLinear
pairs: the same form the torch front end's export produces, so one splitter makes the three files."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.qdq.split import QUANTIZER_KEY_ATTRIBUTE
from lowbit.qdq.storage import onnx_storage
from lowbit.quant.quantizer import Quantizer
from lowbit.target.points import QuantPoint


def tagged_model(model: onnx.ModelProto, points: list[QuantPoint], quantizers: dict[str, Quantizer]) -> onnx.ModelProto:
    """A copy of ``model`` with a tagged Q → DQ pair per quantizer; graph outputs keep their names."""
    result = copy.deepcopy(model)
    graph = result.graph
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    ranks.update({v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info]})
    outputs = {o.name for o in graph.output}
    by_tensor = {p.node: p for p in points if p.role != "weight" and p.argument is None}
    by_input = {(p.node, p.argument): p for p in points if p.argument is not None}
    by_weight = {p.module: p for p in points if p.role == "weight"}
    initializers, nodes, renamed = [], [], {}

    def pair(source: str, key: str, rank: int) -> str:
        """Append a Q → DQ pair reading ``source`` and its initializers; return the DQ's output."""
        new, tensors, dequantized = _qdq_nodes(source, key, quantizers[key], rank)
        nodes.extend(new)
        initializers.extend(tensors)
        return dequantized

    for name in [i.name for i in graph.input if i.name in by_tensor]:
        renamed[name] = pair(name, by_tensor[name].key, ranks.get(name, 0))
    for node in graph.node:
        for index, name in enumerate(node.input):
            point = by_input.get((node.name, name))
            if point is not None:
                node.input[index] = pair(renamed.get(name, name), point.key, ranks.get(name, 0))
            elif name in by_weight:
                if name not in renamed:
                    renamed[name] = pair(name, by_weight[name].key, ranks[name])
                node.input[index] = renamed[name]
            else:
                node.input[index] = renamed.get(name, name)
        nodes.append(node)
        for index, name in enumerate(node.output):
            point = by_tensor.get(name)
            if point is None:
                continue
            if name in outputs:  # the DQ writes the graph output; the op now writes a new name
                node.output[index] = f"{name}_pre_quantization"
                pair(node.output[index], point.key, ranks.get(name, 0))
                nodes[-1].output[0] = name
            else:
                renamed[name] = pair(name, point.key, ranks.get(name, 0))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    if any(n.domain == "com.microsoft" for n in nodes):
        result.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return result


def _qdq_nodes(source: str, key: str, quantizer: Quantizer, rank: int):
    """(Q and DQ nodes, their scale and zero-point initializers, the DQ output name) for ``source``."""
    encoding = quantizer.require_encoding(key).to("cpu")
    type_name, zero_point = onnx_storage(encoding)
    scale = encoding.scale.reshape(-1).numpy().astype(np.float32)
    zero = zero_point.reshape(-1).numpy().astype(type_name)
    attributes = {}
    if encoding.spec.axis is None:
        scale, zero = scale.reshape(()), zero.reshape(())
    else:
        attributes["axis"] = encoding.spec.axis % rank
    scale_name, zero_name = f"{key}_lowbit_scale", f"{key}_lowbit_zero_point"
    domain = "" if type_name in ("int8", "uint8") else "com.microsoft"
    quantized, dequantized = f"{key}_lowbit_q", f"{key}_lowbit_dq"
    quantize = helper.make_node("QuantizeLinear", [source, scale_name, zero_name], [quantized],
                                domain=domain, **attributes, **{QUANTIZER_KEY_ATTRIBUTE: key})
    dequantize = helper.make_node("DequantizeLinear", [quantized, scale_name, zero_name], [dequantized],
                                  domain=domain, **attributes)
    tensors = [numpy_helper.from_array(scale, scale_name), numpy_helper.from_array(zero, zero_name)]
    return [quantize, dequantize], tensors, dequantized
