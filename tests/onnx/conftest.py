"""Fixtures of the ONNX front end's tests: the real MobileNetV2 as other frameworks export it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper


def initializers_to_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer as a Constant node instead (how Paddle and some TF converters write weights)."""
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    del model.graph.initializer[:]
    nodes = constants + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


@pytest.fixture(scope="session")
def unfused_mobilenet(mobilenet, tmp_path_factory):
    """MobileNetV2 exported without constant folding: every BatchNormalization kept, weights as Constants."""
    path = tmp_path_factory.mktemp("unfused") / "mobilenet_bn.onnx"
    torch.onnx.export(mobilenet, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}})
    model = initializers_to_constants(onnx.load(path))
    onnx.save(model, path)
    return path


def mlp(trans_b_first: int) -> onnx.ModelProto:
    """Gemm (transB as given) → Relu → Gemm (transB=1) → LeakyRelu → Gemm without bias, with channels
    of very different ranges."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(size=(6, 8)) * rng.uniform(0.01, 10, size=(6, 1))  # [out, in]
    tensors = {"w1": w1 if trans_b_first else w1.T, "b1": rng.normal(size=6),
               "w2": rng.normal(size=(5, 6)) * rng.uniform(0.1, 5, size=(1, 6)), "b2": rng.normal(size=5),
               "w3": rng.normal(size=(3, 5))}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=trans_b_first),
             helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], transB=1),
             helper.make_node("LeakyRelu", ["h2"], ["a2"], alpha=0.1),
             helper.make_node("Gemm", ["a2", "w3"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (4, 8))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in tensors.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def gemm_chain():
    """Builds the three-Gemm chain (see :func:`mlp`) with the first Gemm's transB as given."""
    return mlp
