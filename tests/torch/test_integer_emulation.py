"""The sim's integer emulation equals onnxruntime's QLinearConv / QLinearAdd, ties included."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from lowbit.quant.encoding import Encoding
from lowbit.quant.spec import QuantSpec
from lowbit.torch.integer_emulation import conv_requantization, requantize_grid, requantized_add_grid

RNG = np.random.default_rng(0)


def _run(nodes, inputs, initializers, output_type=TensorProto.UINT8):
    graph = helper.make_graph(
        nodes, "single_op", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info("out", output_type, None)],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, inputs)[0]


def _activation(scale, zero_point):
    spec = QuantSpec(8, symmetric=False)
    return Encoding.from_scale_offset(spec, torch.tensor(scale, dtype=torch.float32), torch.tensor(-zero_point))


def _on_grid(values, scale, zero_point):
    grid = np.clip(np.round(values / np.float32(scale)) + zero_point, 0, 255)
    return ((grid - zero_point) * np.float32(scale)).astype(np.float32)


def _add_nodes():
    """Q/DQ of a and b, Add, Q of the sum: what onnxruntime fuses into QLinearAdd."""
    return [helper.make_node("QuantizeLinear", ["a", "sa", "za"], ["aq"]),
            helper.make_node("DequantizeLinear", ["aq", "sa", "za"], ["ad"]),
            helper.make_node("QuantizeLinear", ["b", "sb", "zb"], ["bq"]),
            helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["bd"]),
            helper.make_node("Add", ["ad", "bd"], ["c"]),
            helper.make_node("QuantizeLinear", ["c", "sc", "zc"], ["out"])]


@pytest.mark.parametrize("scales", [(0.05, 0.1, 0.1), (0.03, 0.02, 0.04), (0.0371, 0.0513, 0.0713)])
def test_add_matches_qlinearadd(scales):
    sa, sb, sc = (np.float32(s) for s in scales)
    za, zb, zc = np.uint8(100), np.uint8(130), np.uint8(120)
    a = RNG.normal(0, 2, (8, 32, 16, 16)).astype(np.float32)
    b = RNG.normal(0, 2, a.shape).astype(np.float32)
    expected = _run(_add_nodes(), {"a": a, "b": b}, dict(sa=sa, za=za, sb=sb, zb=zb, sc=sc, zc=zc)).astype(np.int64)
    a_grid, b_grid = _on_grid(a, sa, int(za)), _on_grid(b, sb, int(zb))
    result = requantized_add_grid(torch.from_numpy(a_grid), torch.from_numpy(b_grid), _activation(sa, int(za)),
                                  _activation(sb, int(zb)), _activation(sc, int(zc)))[0]
    got = torch.round(result / float(sc)).to(torch.int64).numpy() + int(zc)
    assert (got == expected).all(), f"{int((got != expected).sum())} of {got.size} values differ"


@pytest.mark.parametrize("groups", [1, 16])
def test_conv_matches_qlinearconv(groups):
    channels, outputs = 16, 16 if groups > 1 else 24
    sx, zx, sy, zy = np.float32(0.0371), np.uint8(7), np.float32(0.0913), np.uint8(3)
    w_scale = RNG.uniform(0.001, 0.02, outputs).astype(np.float32)
    weight = RNG.integers(-64, 64, (outputs, channels // groups, 3, 3)).astype(np.int8)
    bias = RNG.integers(-3000, 3000, outputs).astype(np.int32)
    x = RNG.normal(0, 3, (16, channels, 20, 20)).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], pads=[1, 1, 1, 1], group=groups),
             helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["out"])]
    initializers = dict(sx=sx, zx=zx, w=weight, sw=w_scale, zw=np.zeros(outputs, np.int8), b=bias,
                        sb=(sx * w_scale).astype(np.float32), zb=np.zeros(outputs, np.int32), sy=sy, zy=zy)
    expected = _run(nodes, {"x": x}, initializers).astype(np.int64)
    weight_encoding = Encoding.from_scale_offset(QuantSpec(7, symmetric=True, axis=0), torch.from_numpy(w_scale),
                                                 torch.full((outputs,), -64))
    x_grid = torch.from_numpy(np.clip(np.round(x / sx) + zx, 0, 255).astype(np.float32) - float(zx)) * float(sx)
    real_weight = torch.from_numpy(weight.astype(np.float32)) * torch.from_numpy(w_scale).reshape(-1, 1, 1, 1)
    real_bias = torch.from_numpy(bias.astype(np.float32)) * (float(sx) * torch.from_numpy(w_scale))
    convolve = lambda inputs, weights, b: F.conv2d(inputs, weights, b, padding=1, groups=groups)
    integer_form = conv_requantization(real_weight, real_bias, _activation(sx, int(zx)), weight_encoding,
                                       _activation(sy, int(zy)))
    result = requantize_grid(convolve, x_grid, integer_form)[0]
    got = torch.round(result / float(sy)).to(torch.int64).numpy() + int(zy)
    assert (got == expected).all(), f"{int((got != expected).sum())} of {got.size} values differ"


@pytest.mark.parametrize("signed", [False, True], ids=["uint8", "int8"])
def test_add_matches_qlinearadd_on_every_input_pair(signed):
    """All 256 × 256 stored input pairs, for 12 random scale and zero-point triples."""
    rng = np.random.default_rng(11)
    stored = np.arange(-128, 128) if signed else np.arange(256)
    a_stored, b_stored = (v.ravel() for v in np.meshgrid(stored, stored, indexing="ij"))
    storage = np.int8 if signed else np.uint8
    for _ in range(12):
        sa, sb, sc = (np.float32(s) for s in rng.uniform(0.005, 0.2, 3))
        za, zb, zc = (0, 0, 0) if signed else (int(z) for z in rng.integers(0, 256, 3))
        a = ((a_stored - za) * sa).astype(np.float32)
        b = ((b_stored - zb) * sb).astype(np.float32)
        zeros = dict(za=storage(za), zb=storage(zb), zc=storage(zc))
        expected = _run(_add_nodes(), {"a": a, "b": b}, dict(sa=sa, sb=sb, sc=sc, **zeros),
                        TensorProto.INT8 if signed else TensorProto.UINT8).astype(np.int64)
        encodings = [_signed(s) if signed else _activation(s, z) for s, z in ((sa, za), (sb, zb), (sc, zc))]
        result = requantized_add_grid(torch.from_numpy(a), torch.from_numpy(b), *encodings)[0]
        got = torch.round(result / float(sc)).to(torch.int64).numpy() + zc
        assert (got == expected).all(), f"{int((got != expected).sum())} of {got.size} values differ"


def _signed(scale):
    spec = QuantSpec(8, symmetric=True)
    return Encoding.from_scale_offset(spec, torch.tensor(scale, dtype=torch.float32), torch.tensor(-128))
