"""Which tensors calibration may treat as non-negative (no in-graph minimum needed)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from lowbit.onnx.nonnegative import nonnegative_tensors


def _graph(opset: int):
    floor_low = numpy_helper.from_array(np.array(-1.0, np.float32), "floor_low")
    floor_zero = helper.make_node("Constant", [], ["floor_zero"],
                                  value=numpy_helper.from_array(np.array(0.0, np.float32)))
    nodes = [floor_zero, helper.make_node("Relu", ["x"], ["relu"]),
             helper.make_node("Clip", ["x", "floor_zero"], ["clip_zero"]),
             helper.make_node("Clip", ["x", "floor_low"], ["clip_negative"]),
             helper.make_node("Clip", ["x"], ["clip_open"]),
             helper.make_node("Add", ["relu", "clip_zero"], ["sum"])]
    if opset < 11:
        nodes = [nodes[1], helper.make_node("Clip", ["x"], ["clip_zero"], min=0.0, max=6.0),
                 helper.make_node("Clip", ["x"], ["clip_negative"], min=-1.0), nodes[5]]
    outputs = [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None)
               for n in nodes if n.op_type != "Constant"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])], outputs,
                              initializer=[floor_low])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_relu_and_clip_with_a_floor_of_zero_are_found_and_never_negative():
    model = _graph(17)
    found = nonnegative_tensors(model)
    assert found == {"relu", "clip_zero"}
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    runtime = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in runtime.get_outputs()], runtime.run(None, {"x": x})))
    assert all(values[name].min() >= 0 for name in found)
    assert values["clip_negative"].min() < 0 and values["clip_open"].min() < 0 and values["sum"].min() >= 0


def test_clip_bounds_given_as_attributes_before_opset_11():
    assert nonnegative_tensors(_graph(6)) == {"relu", "clip_zero"}
