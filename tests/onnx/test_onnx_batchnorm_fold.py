"""BatchNormalization folding in ONNX graphs: the real MobileNetV2 exported with BN kept (and weights
held in Constant nodes, as Paddle exports them), and Gemm/MatMul/ConvTranspose followed by BN."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.onnx import fold_batchnorm, load_model
from lowbit.runtime import session


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    runtime = session(model.SerializeToString())
    return runtime.run(None, {runtime.get_inputs()[0].name: x})[0]


@pytest.mark.slow
def test_mobilenet_batchnorms_fold_and_outputs_are_unchanged(unfused_mobilenet, eval_batches):
    original = load_model(unfused_mobilenet)
    assert sum(n.op_type == "BatchNormalization" for n in original.graph.node) == 52
    folded, pairs = fold_batchnorm(original)
    assert len(pairs) == 52 and not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    x = eval_batches[0].numpy()
    expected, got = run(original, x), run(folded, x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.slow
def test_paddle_style_mobilenet_quantizes_like_the_fused_export(unfused_mobilenet, mobilenet, calibration_batches,
                                                              eval_batches, mobilenet_export):
    sim = lowbit.quantize(unfused_mobilenet, calibration_batches, target="cpu-int8")
    assert sim.technique_results[0] == "fold batchnorm: 52 layers"
    assert sim.summary()["quantizers"] == {"input": 1, "weight": 53, "output": 64}
    fused = lowbit.quantize(mobilenet_export.onnx, calibration_batches, target="cpu-int8")
    with torch.no_grad():
        reference = torch.cat([mobilenet(b) for b in eval_batches]).argmax(1).numpy()
    agreement = [(np.concatenate([s(b)[0] for b in eval_batches]).argmax(1) == reference).mean() for s in (sim, fused)]
    assert agreement[0] >= 0.85 and abs(agreement[0] - agreement[1]) <= 0.03, agreement


def dense_then_bn(op_type: str, **attributes) -> tuple[onnx.ModelProto, tuple]:
    """One Gemm / MatMul / ConvTranspose with a bias, then BatchNormalization with non-trivial statistics."""
    rng = np.random.default_rng(1)
    if op_type == "ConvTranspose":
        weight, channels, x_shape = rng.normal(size=(3, 5, 2, 2)), 5, (2, 3, 4, 4)
    elif attributes.get("transB"):
        weight, channels, x_shape = rng.normal(size=(6, 4)), 6, (2, 4)
    else:
        weight, channels, x_shape = rng.normal(size=(4, 6)), 6, (2, 4)
    tensors = {"w": weight, "gamma": rng.uniform(0.5, 2, channels), "beta": rng.normal(size=channels),
               "mean": rng.normal(size=channels), "var": rng.uniform(0.2, 3, channels)}
    inputs = ["x", "w"]
    if op_type != "MatMul":
        tensors["b"] = rng.normal(size=channels)
        inputs.append("b")
    nodes = [helper.make_node(op_type, inputs, ["h"], **attributes),
             helper.make_node("BatchNormalization", ["h", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-3)]
    graph = helper.make_graph(nodes, op_type, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), x_shape


@pytest.mark.parametrize("op_type, attributes", [("Gemm", {"transB": 1, "alpha": 0.5, "beta": 2.0}),
                                                 ("Gemm", {}), ("MatMul", {}), ("ConvTranspose", {"strides": [2, 2]})])
def test_dense_layers_fold_exactly(op_type, attributes):
    model, x_shape = dense_then_bn(op_type, **attributes)
    original = load_model(model)
    folded, pairs = fold_batchnorm(original)
    assert len(pairs) == 1 and [n.op_type for n in folded.graph.node] == [op_type if op_type != "MatMul" else "Gemm"]
    x = np.random.default_rng(2).normal(size=x_shape).astype(np.float32)
    np.testing.assert_allclose(run(folded, x), run(original, x), rtol=1e-5, atol=1e-5)


def depthwise_then_affine(mul_shape: tuple, add_shape: tuple, shift_op: str = "Add") -> onnx.ModelProto:
    """A depthwise Conv (no bias) then Mul and Add by constants: BatchNorm as tf2onnx writes it after depthwise
    convolutions."""
    rng = np.random.default_rng(3)
    tensors = {"w": rng.normal(size=(4, 1, 3, 3)), "a": rng.uniform(0.5, 2, mul_shape), "b": rng.normal(size=add_shape)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["h", "a"], ["m"]),
             helper.make_node(shift_op, ["b", "m"] if shift_op == "Add" else ["m", "b"], ["y"])]
    graph = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 4, 5, 5))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mul_shape, add_shape, shift_op", [((4, 1, 1), (4, 1, 1), "Add"), ((1, 4, 1, 1), (1,), "Add"),
                                                             ((1,), (4, 1, 1), "Add"), ((4, 1, 1), (4, 1, 1), "Sub")])
def test_per_channel_mul_and_add_after_a_layer_fold_exactly(mul_shape, add_shape, shift_op):
    original = load_model(depthwise_then_affine(mul_shape, add_shape, shift_op))
    folded, pairs = fold_batchnorm(original)
    assert len(pairs) == 2 and [n.op_type for n in folded.graph.node] == ["Conv"]
    x = np.random.default_rng(4).normal(size=(2, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(folded, x), run(original, x), rtol=1e-5, atol=1e-5)


def test_a_mul_that_varies_along_space_stays():
    original = load_model(depthwise_then_affine((4, 5, 1), (4, 1, 1)))
    folded, pairs = fold_batchnorm(original)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Mul", "Add"] and pairs == []
