"""A QDQ graph whose quantized softmaxes run in float before their QuantizeLinear, as lowbit's LiteRT files hold them,
rather than as onnxruntime's QLinearSoftmax (which it fuses from DequantizeLinear → Softmax → QuantizeLinear)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper


def float_softmaxes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with each Softmax computed in float64 between casts, which onnxruntime does not fuse."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = []
    for node in model.graph.node:
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        wide_input, wide_output = f"{node.output[0]}_float64_input", f"{node.output[0]}_float64"
        nodes.append(helper.make_node("Cast", [node.input[0]], [wide_input], to=TensorProto.DOUBLE))
        softmax = helper.make_node("Softmax", [wide_input], [wide_output], name=node.name)
        softmax.attribute.extend(node.attribute)
        nodes.append(softmax)
        nodes.append(helper.make_node("Cast", [wide_output], [node.output[0]], to=TensorProto.FLOAT))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
