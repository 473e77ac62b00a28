"""Loading ONNX models: Constant-node weights become initializers without changing what onnxruntime
computes, and each kind of bad file gets one clear ModelLoadError."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowbit.errors import ModelLoadError
from lowbit.onnx import load_model


def conv_bn_model(opset: int = 13, weights_as_constants: bool = True) -> onnx.ModelProto:
    """Conv (weights from a Constant node or an initializer) → BatchNormalization → Relu → Flatten."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    bn = [rng.uniform(0.5, 1.5, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2.0, 4)]
    bn_tensors = [numpy_helper.from_array(v.astype(np.float32), name)
                  for v, name in zip(bn, ("gamma", "beta", "mean", "var"))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"]),
             helper.make_node("Relu", ["b"], ["r"]),
             helper.make_node("Constant", [], ["shape"], value_ints=[1, -1]),
             helper.make_node("Reshape", ["r", "shape"], ["y"])]
    initializers = list(bn_tensors)
    if weights_as_constants:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight)))
    else:
        initializers.append(numpy_helper.from_array(weight, "w"))
    graph = helper.make_graph(nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_constant_weights_become_initializers_and_outputs_are_unchanged(tmp_path):
    original = conv_bn_model()
    path = tmp_path / "model.onnx"
    onnx.save(original, path)
    loaded = load_model(path)
    assert [n.op_type for n in loaded.graph.node] == ["Conv", "BatchNormalization", "Relu", "Reshape"]
    assert {"w", "shape"} <= {t.name for t in loaded.graph.initializer}
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(loaded, x), run(original, x))


def test_tensors_shared_through_identity_nodes_get_initializers_of_their_own():
    # exporters write equal tensors once and hand them to each reader through Identity nodes
    model = conv_bn_model(weights_as_constants=False)
    model.graph.node.insert(0, helper.make_node("Identity", ["w"], ["w_shared"], name="share_w"))
    model.graph.node[1].input[1] = "w_shared"
    loaded = load_model(model)
    assert "Identity" not in [n.op_type for n in loaded.graph.node]
    assert loaded.graph.node[0].input[1] == "w_shared" and "w_shared" in {t.name for t in loaded.graph.initializer}
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(loaded, x), run(model, x))


def test_shapes_are_inferred_and_the_callers_proto_is_not_modified():
    original = conv_bn_model()
    loaded = load_model(original)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in loaded.graph.value_info}
    assert shapes["c"] == [1, 4, 8, 8] and shapes["r"] == [1, 4, 8, 8]
    assert sum(n.op_type == "Constant" for n in original.graph.node) == 2


def test_external_data_is_read(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(conv_bn_model(weights_as_constants=False), path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    loaded = load_model(path)
    weight = next(t for t in loaded.graph.initializer if t.name == "w")
    expected = next(t for t in conv_bn_model(weights_as_constants=False).graph.initializer if t.name == "w")
    np.testing.assert_array_equal(numpy_helper.to_array(weight), numpy_helper.to_array(expected))


def test_missing_external_data_is_named(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(conv_bn_model(weights_as_constants=False), path, save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelLoadError, match="external data file 'weights.bin'"):
        load_model(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a protobuf\n" * 10)
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        load_model(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_file(tmp_path, fraction):
    data = conv_bn_model(weights_as_constants=False).SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelLoadError):
        load_model(path)


def test_old_opset_is_refused_with_the_fix():
    with pytest.raises(ModelLoadError, match="unsupported ONNX opset 9.*convert_version"):
        load_model(conv_bn_model(opset=9))


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "absent.onnx")
