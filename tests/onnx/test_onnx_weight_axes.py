"""Per-channel weight quantization on the output-channel axis of each weighted ONNX op: Conv (0),
ConvTranspose (1), Gemm with transB=1 (0) and without (1), MatMul with a 2-D weight (1)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowbit.onnx import OnnxQuantSim

RNG = np.random.default_rng(0)

CASES = {
    # op: (weight shape, axis, input shape, extra attributes)
    "Conv": ((6, 3, 3, 3), 0, (2, 3, 8, 8), {"pads": [1, 1, 1, 1]}),
    "ConvTranspose": ((3, 5, 2, 2), 1, (2, 3, 4, 4), {"strides": [2, 2]}),
    "Gemm-transB": ((7, 4), 0, (2, 4), {"transB": 1}),
    "Gemm": ((4, 7), 1, (2, 4), {}),
    "MatMul": ((4, 7), 1, (2, 4), {}),
}


def one_layer_model(case: str) -> tuple[onnx.ModelProto, np.ndarray]:
    """One weighted op whose weight channels have very different ranges, as an opset-17 model."""
    weight_shape, axis, input_shape, attributes = CASES[case]
    spread = np.logspace(-2, 0, weight_shape[axis]).reshape([-1 if i == axis else 1 for i in range(len(weight_shape))])
    weight = (RNG.normal(size=weight_shape) * spread).astype(np.float32)
    op_type = case.split("-")[0]
    node = helper.make_node(op_type, ["x", "w"], ["y"], **attributes)
    graph = helper.make_graph([node], case, [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model), weight


@pytest.mark.parametrize("case", list(CASES))
def test_weight_scales_run_along_the_output_channel_axis(case, tmp_path):
    model, weight = one_layer_model(case)
    _, axis, input_shape, _ = CASES[case]
    data = [RNG.normal(size=input_shape).astype(np.float32) for _ in range(2)]
    paths = OnnxQuantSim(model, threads=1).calibrate(data).export(tmp_path, "layer")
    qdq = onnx.load(paths.qdq_onnx)
    initializers = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    (dequantize,) = [n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers
                     and initializers[n.input[0]].shape == weight.shape]
    assert [a.i for a in dequantize.attribute if a.name == "axis"] == [axis]
    integers, scale = initializers[dequantize.input[0]], initializers[dequantize.input[1]]
    assert integers.dtype == np.int8 and scale.shape == (weight.shape[axis],)
    per_channel = scale.reshape([-1 if i == axis else 1 for i in range(weight.ndim)])
    # by definition of symmetric per-channel rounding: every weight within half a step of its channel's grid,
    # and every channel's largest magnitude on (or next to) the grid's end
    assert np.all(np.abs(integers * per_channel - weight) <= per_channel / 2 * (1 + 1e-5))
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    assert np.all(np.abs(integers).max(axis=reduce) >= 127)
