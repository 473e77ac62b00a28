"""Tensors of an ONNX graph that cannot be negative, read from the op that produces them."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

_NONNEGATIVE_OPS = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus"}


def nonnegative_tensors(model: onnx.ModelProto) -> set[str]:
    """Outputs of Relu-like ops and of Clip with a lower bound of zero or more."""
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    result = set()
    for node in model.graph.node:
        if node.op_type in _NONNEGATIVE_OPS or (node.op_type == "Clip" and _clip_floor(node, constants) >= 0):
            result.add(node.output[0])
    return result


def _clip_floor(node: onnx.NodeProto, constants: dict) -> float:
    """Clip's lower bound (attribute before opset 11, constant input after); -inf when not known."""
    for attribute in node.attribute:
        if attribute.name == "min":
            return attribute.f
    if len(node.input) > 1 and node.input[1] in constants:
        return float(np.min(numpy_helper.to_array(constants[node.input[1]])))
    return -np.inf
