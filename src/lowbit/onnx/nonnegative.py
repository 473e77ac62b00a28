"""Tensors of an ONNX graph that cannot be negative, read from the op that produces them."""

from __future__ import annotations

import onnx

from lowbit.onnx.attributes import clip_bounds

_NONNEGATIVE_OPS = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus"}


def nonnegative_tensors(model: onnx.ModelProto) -> set[str]:
    """Outputs of Relu-like ops and of Clip with a lower bound of zero or more."""
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({n.output[0]: a.t for n in model.graph.node if n.op_type == "Constant"
                      for a in n.attribute if a.name == "value"})
    return {node.output[0] for node in model.graph.node
            if node.op_type in _NONNEGATIVE_OPS or (node.op_type == "Clip" and clip_bounds(constants, node)[0] >= 0)}
