"""Flatten(axis=1) written as Reshape(shape=[0, -1]): the same values, and onnxruntime fuses a
DequantizeLinear across Reshape into the next integer Gemm/MatMul (QGemm), but not across Flatten."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def flatten_as_reshape(graph: onnx.GraphProto) -> None:
    """Rewrite each Flatten with axis 1 in place."""
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if node.op_type != "Flatten" or node.domain not in ("", "ai.onnx") or axis != 1:
            continue
        shape = f"{node.output[0]}__reshape_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([0, -1], dtype=np.int64), shape))
        node.op_type = "Reshape"
        del node.attribute[:]
        node.input.append(shape)
