"""Keras's torch and JAX backends export each convolution between transposes with its bias, BatchNorm and padding
as separate ops (and ReLU6 as Max and Min under JAX); the cleaned graph computes the same outputs with those folded
into the Conv, and quantizes for LiteRT as the TensorFlow backend's graph does."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lowbit.keras.graph_cleanup import cleaned
from lowbit.runtime import session

JOB = Path(__file__).with_name("backend_job.py")


def _channels_last_conv_graph(relu6_as_max_min: bool = False) -> onnx.ModelProto:
    """NHWC input → Pad → Transpose → Conv → Transpose → Add, Sub, Mul, Div by per-channel constants → Relu (or
    Max by 0 then Min by 6), as the torch and JAX backends write a padded Conv2D with its bias and a BatchNorm."""
    generator = np.random.default_rng(0)
    per_channel = lambda name: numpy_helper.from_array(generator.uniform(0.5, 1.5, (1, 1, 1, 4)).astype(np.float32),
                                                       name)
    initializers = [numpy_helper.from_array(generator.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
                    numpy_helper.from_array(np.array([0, 1, 1, 0, 0, 2, 0, 0], np.int64), "pads"),
                    *(per_channel(name) for name in ("bias", "mean", "scale", "deviation"))]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded"]),
             helper.make_node("Transpose", ["padded"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["conv"], strides=[2, 2]),
             helper.make_node("Transpose", ["conv"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["nhwc", "bias"], ["biased"]),
             helper.make_node("Sub", ["biased", "mean"], ["centred"]),
             helper.make_node("Mul", ["scale", "centred"], ["scaled"]),
             helper.make_node("Div", ["scaled", "deviation"], ["normalised"]),
             *([helper.make_node("Max", ["normalised", "zero"], ["rectified"]),
                helper.make_node("Min", ["six", "rectified"], ["y"])] if relu6_as_max_min else
               [helper.make_node("Relu", ["normalised"], ["y"])])]
    initializers += [numpy_helper.from_array(np.array(v, np.float32), n) for v, n in ((0.0, "zero"), (6.0, "six"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 9, 9, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("activation", ["Relu", "Clip"])
def test_bias_batchnorm_and_padding_fold_into_the_conv_with_the_same_outputs(activation):
    model = _channels_last_conv_graph(relu6_as_max_min=activation == "Clip")
    x = np.random.default_rng(1).normal(size=(2, 9, 9, 3)).astype(np.float32) * 4
    before = session(model.SerializeToString(), optimize=False).run(None, {"x": x})[0]
    result = cleaned(model)
    after = session(result.SerializeToString(), optimize=False).run(None, {"x": x})[0]
    op_types = [n.op_type for n in result.graph.node]
    assert op_types.count("Conv") == 1 and not {"Pad", "Add", "Sub", "Mul", "Div", "Max", "Min"} & set(op_types)
    assert op_types.index(activation) == op_types.index("Conv") + 1  # the activation follows the Conv: fusable
    assert 0 < (before == 6).mean() < 1 if activation == "Clip" else 0 < (before == 0).mean() < 1
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_keras_model_of_another_backend_quantizes_and_runs_in_litert_as_simulated(backend, tmp_path):
    pytest.importorskip("keras", reason="the Keras front end needs the keras extra: pip install 'lowbit[keras]'")
    if backend == "jax" and importlib.util.find_spec("jax2onnx") is None:
        pytest.skip("Keras's ONNX export under JAX needs jax and jax2onnx (pip install jax jax2onnx)")
    run = subprocess.run([sys.executable, str(JOB), str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "KERAS_BACKEND": backend})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["float_error"] <= 1e-5 * result["output_range"]
    assert set(result["op_types"]) <= {"Transpose", "Conv", "Clip", "Relu", "Add", "GlobalAveragePool", "Flatten",
                                       "Gemm"}
    assert result["op_types"]["Transpose"] == 1 and result["op_types"]["Add"] == 1  # the input's; the residual
    assert result["agreement"] >= 0.9
    assert result["litert_agreement"] == 1.0 and result["litert_lsb"] <= 1.0
