"""Fixtures of the ONNX front end's tests: the real MobileNetV2 as other frameworks export it."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import helper


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
