"""The sim's int16 pair saturation equals onnxruntime's u8×s8 kernels on this machine's CPU.

Each case runs one QDQ layer in onnxruntime with 8-bit weights over the full int8 range and inputs
over the full uint8 range, and compares with the exact accumulation plus the sim's correction.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lowbit.quant.encoding import Encoding
from lowbit.quant.spec import QuantSpec
from lowbit.torch import pair_saturation

OUTPUT_SCALE = 2048.0  # uint8 outputs around 128 then cover ±260 000, the accumulations' range here


def _session(nodes, initializers, input_rank):
    graph = helper.make_graph(
        nodes, "one_layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None] * input_rank)],
        [helper.make_tensor_value_info("out", TensorProto.UINT8, None)],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _qdq(layer_node, weight, zero_point, weight_axis):
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "one", "zw"], ["wd"], axis=weight_axis),
             layer_node, helper.make_node("QuantizeLinear", ["y", "so", "zo"], ["out"])]
    initializers = dict(one=np.float32(1.0), zx=np.uint8(zero_point), w=weight.astype(np.int8), zw=np.int8(0),
                        so=np.float32(OUTPUT_SCALE), zo=np.uint8(128))
    return nodes, initializers


def _input_encoding(zero_point):
    return Encoding.from_scale_offset(QuantSpec(8, symmetric=False), torch.tensor(1.0), torch.tensor(-zero_point))


def _requantized(accumulator):
    return torch.round(accumulator / OUTPUT_SCALE).clamp(-128, 127).numpy().astype(np.int64) + 128


CONVS = [  # (in, out, kernel, stride, padding, groups, dilation)
    (3, 16, 7, 2, 3, 1, 1), (16, 16, 3, 1, 1, 1, 1), (32, 64, 1, 1, 0, 1, 1), (8, 8, 3, 1, 1, 2, 1),
    (5, 7, 3, 1, 2, 1, 2), (24, 24, 3, 1, 1, 24, 1), (96, 160, 1, 1, 0, 1, 1)]


@pytest.mark.parametrize("shape", CONVS, ids=lambda s: "x".join(map(str, s)))
def test_conv_matches_onnxruntime(shape):
    channels, outputs, kernel, stride, padding, groups, dilation = shape
    rng = np.random.default_rng(sum(shape))
    weight = rng.integers(-127, 128, (outputs, channels // groups, kernel, kernel)).astype(np.float32)
    zero_point = int(rng.integers(0, 200))
    centred = rng.integers(0, 256, (2, channels, 12, 12)).astype(np.float32) - zero_point
    conv = helper.make_node("Conv", ["xd", "wd"], ["y"], group=groups, pads=[padding] * 4, strides=[stride] * 2,
                            dilations=[dilation] * 2)
    expected = _session(*_qdq(conv, weight, zero_point, 0), 4).run(None, {"x": centred})[0].astype(np.int64)

    layer = nn.Conv2d(channels, outputs, kernel, stride, padding, dilation, groups, bias=False)
    x, w = torch.from_numpy(centred), torch.from_numpy(weight)
    exact = F.conv2d(x, w, None, stride, padding, dilation, groups)
    pairs = pair_saturation.layer_pairs(layer, w, _input_encoding(zero_point))
    emulated = exact if pairs is None or not pair_saturation.host_saturates() else \
        exact + pair_saturation.conv_correction(layer, pairs, x)
    np.testing.assert_array_equal(_requantized(emulated), expected)
    if pair_saturation.host_saturates() and groups != channels:
        assert (_requantized(exact) != expected).any()  # the case does saturate: the check has teeth
    if groups == channels:
        assert pairs is None  # depthwise kernels keep int32 products


@pytest.mark.parametrize("operator", ["MatMul", "Gemm"])
def test_linear_matches_onnxruntime(operator):
    rng = np.random.default_rng(5)
    features, outputs, zero_point = 96, 40, 17
    weight = rng.integers(-127, 128, (outputs, features)).astype(np.float32)
    centred = rng.integers(0, 256, (3, 7, features)).astype(np.float32) - zero_point
    if operator == "Gemm":
        centred = centred.reshape(-1, features)
        node = helper.make_node("Gemm", ["xd", "wd"], ["y"], transB=1)
        nodes, initializers = _qdq(node, weight, zero_point, 0)
    else:
        nodes, initializers = _qdq(helper.make_node("MatMul", ["xd", "wd"], ["y"]), weight.T.copy(), zero_point, 1)
    expected = _session(nodes, initializers, centred.ndim).run(None, {"x": centred})[0].astype(np.int64)

    x, w = torch.from_numpy(centred), torch.from_numpy(weight)
    exact = x @ w.T
    pairs = pair_saturation.layer_pairs(nn.Linear(features, outputs), w, _input_encoding(zero_point))
    emulated = exact + pair_saturation.linear_correction(pairs, x) if pair_saturation.host_saturates() else exact
    np.testing.assert_array_equal(_requantized(emulated), expected)


def test_pairs_that_cannot_saturate_are_left_out():
    weight = torch.tensor([[127.0, 1.0, 64.0, 64.0, -100.0, -29.0, -100.0, -30.0, 127.0]])
    pairs = pair_saturation.find_pairs(weight, _input_encoding(0))
    # 127+1 = 128 and 64+64 = 128 stay below 32767/255; -129 and -130 can saturate; the odd tail has no pair
    assert pairs.first.tolist() == [4, 6]
    assert pairs.weights.tolist() == [[-100.0, -29.0], [-100.0, -30.0]]


def test_simulating_overrides_the_detection():
    with pair_saturation.simulating(True):
        assert pair_saturation.host_saturates()
        with pair_saturation.simulating(False):
            assert not pair_saturation.host_saturates()
        assert pair_saturation.host_saturates()
