"""A QDQ graph whose quantized additions compute LiteRT's fixed-point arithmetic in onnxruntime: each
DequantizeLinear pair → Add (→ Relu) → QuantizeLinear becomes exact float64 integer arithmetic on the stored values
with the same output, so an ONNX sim predicts LiteRT's additions (``Kernels.fixed_point_add``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lowbit.kernels import fixed_point_add_parameters
from lowbit.qdq.graph_index import GraphIndex


def fixed_point_adds(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every per-tensor 8-bit quantized addition in XNNPACK's fixed point."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    index = GraphIndex(graph)
    for add in [n for n in graph.node if n.op_type == "Add"]:
        pattern = _pattern(add, index, {o.name for o in graph.output})
        if pattern is None:
            continue
        dequantized, relu, quantize = pattern
        position = list(graph.node).index(add)  # its inputs exist there; what reads the Q output comes later
        for node in [n for n in (add, relu, quantize) if n is not None]:
            graph.node.remove(node)
        for offset, node in enumerate(_arithmetic(dequantized, relu is not None, quantize, index)):
            graph.node.insert(position + offset, node)
    return model


def _pattern(add, index: GraphIndex, outputs):
    """(the two input DequantizeLinear nodes, the Relu or None, the QuantizeLinear) of a quantized addition."""
    sources = [index.producer.get(name) for name in add.input]
    if any(s is None or s.op_type != "DequantizeLinear" or not _per_tensor_8bit(s, index) for s in sources):
        return None
    value, relu = add.output[0], None
    readers = index.consumers.get(value, [])
    if len(readers) == 1 and readers[0].op_type == "Relu" and value not in outputs:
        relu, value = readers[0], readers[0].output[0]
        readers = index.consumers.get(value, [])
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or value in outputs:
        return None
    return (sources, relu, readers[0]) if _per_tensor_8bit(readers[0], index) else None


def _per_tensor_8bit(node, index: GraphIndex) -> bool:
    scale, zero = (index.constant(name) for name in node.input[1:3])
    return (scale is not None and zero is not None and scale.size == 1 and zero.dtype in (np.uint8, np.int8))


def _arithmetic(dequantized, relu: bool, quantize, index: GraphIndex) -> list[onnx.NodeProto]:
    """Nodes computing the QuantizeLinear's output from the stored inputs: floor((a·ma + b·mb + bias) / 2**shift)
    + zc, clamped to the stored range (from zc up where a Relu was fused), cast to the stored type."""
    scales = [np.float32(index.constant(n.input[1]).reshape(())) for n in (*dequantized, quantize)]
    zeros = [float(index.constant(n.input[2]).reshape(())) for n in (*dequantized, quantize)]
    shift, a_multiplier, b_multiplier = fixed_point_add_parameters(float(scales[0] / scales[2]),
                                                                   float(scales[1] / scales[2]))
    bias = 2.0 ** (shift - 1) - a_multiplier * zeros[0] - b_multiplier * zeros[1]
    stored = index.constant(quantize.input[2]).dtype
    low, high = np.iinfo(stored).min, np.iinfo(stored).max
    low = max(low, zeros[2]) if relu else low
    out = quantize.output[0]
    prefix = f"{out}_fixed_point"

    def constant(name: str, value: float) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [f"{prefix}_{name}"],
                                value=numpy_helper.from_array(np.array(value, dtype=np.float64)))

    return [constant("a_multiplier", a_multiplier), constant("b_multiplier", b_multiplier), constant("bias", bias),
            constant("step", 2.0 ** -shift), constant("zero", zeros[2]), constant("low", low),
            constant("high", high),
            helper.make_node("Cast", [dequantized[0].input[0]], [f"{prefix}_a"], to=TensorProto.DOUBLE),
            helper.make_node("Cast", [dequantized[1].input[0]], [f"{prefix}_b"], to=TensorProto.DOUBLE),
            helper.make_node("Mul", [f"{prefix}_a", f"{prefix}_a_multiplier"], [f"{prefix}_a_product"]),
            helper.make_node("Mul", [f"{prefix}_b", f"{prefix}_b_multiplier"], [f"{prefix}_b_product"]),
            helper.make_node("Add", [f"{prefix}_a_product", f"{prefix}_b_product"], [f"{prefix}_sum"]),
            helper.make_node("Add", [f"{prefix}_sum", f"{prefix}_bias"], [f"{prefix}_biased"]),
            helper.make_node("Mul", [f"{prefix}_biased", f"{prefix}_step"], [f"{prefix}_scaled"]),
            helper.make_node("Floor", [f"{prefix}_scaled"], [f"{prefix}_floor"]),
            helper.make_node("Add", [f"{prefix}_floor", f"{prefix}_zero"], [f"{prefix}_shifted"]),
            helper.make_node("Clip", [f"{prefix}_shifted", f"{prefix}_low", f"{prefix}_high"], [f"{prefix}_clipped"]),
            helper.make_node("Cast", [f"{prefix}_clipped"], [out], to=helper.np_dtype_to_tensor_dtype(stored))]
