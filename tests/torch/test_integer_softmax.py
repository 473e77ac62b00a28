"""QLinearSoftmax emulation against onnxruntime running DequantizeLinear → Softmax → QuantizeLinear."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lowbit.quant.encoding import Encoding
from lowbit.quant.spec import QuantSpec
from lowbit.torch.integer_softmax import qlinear_softmax

_UNSIGNED = QuantSpec(8, symmetric=False, signed=False)


def _session(input_scale, input_zero, output_scale, output_zero, length, axis):
    constants = [numpy_helper.from_array(np.array(v, t), n) for v, t, n in
                 ((input_scale, np.float32, "si"), (input_zero, np.uint8, "zi"),
                  (output_scale, np.float32, "so"), (output_zero, np.uint8, "zo"))]
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["xq", "si", "zi"], ["x"]),
         helper.make_node("Softmax", ["x"], ["y"], axis=axis),
         helper.make_node("QuantizeLinear", ["y", "so", "zo"], ["yq"]),
         helper.make_node("DequantizeLinear", ["yq", "so", "zo"], ["out"])],
        "softmax", [helper.make_tensor_value_info("xq", TensorProto.UINT8, ["N", length, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", length, 3])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("seed", range(6))
def test_qlinear_softmax_equals_onnxruntime(seed):
    """Random grids and row lengths (tiny input scales included, where e · ⌊1/y_scale⌋ leaves float32)."""
    rng = np.random.default_rng(seed)
    input_scale = np.float32(10 ** rng.uniform(-3.5, -0.5))
    output_scale = np.float32(rng.uniform(0.8, 1.05) / 255)
    length = int(rng.choice([2, 5, 12, 100, 1000]))
    input_zero, output_zero = int(rng.integers(0, 256)), int(rng.integers(0, 8))
    stored = rng.integers(0, 256, (64, length, 3)).astype(np.uint8)
    expected = _session(input_scale, input_zero, output_scale, output_zero, length, axis=1).run(
        None, {"xq": stored})[0]
    x = torch.from_numpy((stored.astype(np.float32) - input_zero) * input_scale)
    input_encoding = Encoding(_UNSIGNED, torch.tensor(input_scale), torch.tensor(-input_zero))
    output_encoding = Encoding(_UNSIGNED, torch.tensor(output_scale), torch.tensor(-output_zero))
    got, centred = qlinear_softmax(x, 1, input_encoding, output_encoding)
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(centred.numpy() * output_scale, expected)


def test_qlinear_softmax_floors_the_inverse_output_scale():
    """By definition: a row of equal inputs gives 1/length each, stored as round(⌊1/y_scale⌋ / length)."""
    output_scale = np.float32(1 / 250.5)
    x = torch.zeros(1, 4)
    encoding = Encoding(_UNSIGNED, torch.tensor(np.float32(0.1)), torch.tensor(-128))
    got, centred = qlinear_softmax(x, 1, encoding, Encoding(_UNSIGNED, torch.tensor(output_scale), torch.tensor(0)))
    assert centred.tolist() == [[62.0] * 4]  # round(250 / 4) = 62 (half to even); exact softmax: round(62.625) = 63
