"""The sim's int16 pair saturation equals onnxruntime's u8×s8 kernels on this machine's CPU, and its
definition on every CPU.

Each onnxruntime case runs one QDQ layer with 8-bit weights over the full int8 range and inputs over
the full uint8 range, and compares with the exact accumulation plus the sim's correction where this
CPU saturates (exact sums elsewhere); the definition cases compare the correction with pair sums
clamped to int16 computed directly, so the saturating form is checked on VNNI machines too; two sims
with different runtime settings run side by side in one process.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import lowbit
from lowbit.kernels import host_kernels
from lowbit.quant.encoding import Encoding
from lowbit.quant.spec import QuantSpec
from lowbit.runtime import session
from lowbit.torch import pair_saturation

HOST = host_kernels()

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
    emulated = exact if pairs is None or not HOST.int16_pairs else \
        exact + pair_saturation.conv_correction(layer, pairs, x)
    np.testing.assert_array_equal(_requantized(emulated), expected)
    if HOST.int16_pairs and groups != channels:
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
    emulated = exact + pair_saturation.linear_correction(pairs, x) if HOST.int16_pairs else exact
    np.testing.assert_array_equal(_requantized(emulated), expected)


def test_pairs_that_cannot_saturate_are_left_out():
    weight = torch.tensor([[127.0, 1.0, 64.0, 64.0, -100.0, -29.0, -100.0, -30.0, 127.0]])
    pairs = pair_saturation.find_pairs(weight, _input_encoding(0))
    # 127+1 = 128 and 64+64 = 128 stay below 32767/255; -129 and -130 can saturate; the odd tail has no pair
    assert pairs.first.tolist() == [4, 6]
    assert pairs.weights.tolist() == [[-100.0, -29.0], [-100.0, -30.0]]


def test_two_sims_in_one_process_predict_their_own_runtime(tmp_path):
    """One model, two sims: one predicting CPUs without VNNI (int16 pairs saturate), one with VNNI,
    called in turn. They part where pairs saturate, and each matches its runtime: the host's in
    onnxruntime's integer kernels, the exact one in its float kernels (unoptimised session)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    with torch.no_grad():
        model[2].weight.fill_(0.5)  # every adjacent pair of same-sign 8-bit weights can saturate
    data = [torch.rand(4, 8, 8, 8) * 3 for _ in range(2)]
    sims = {name: lowbit.quantize(model, data, runtime=name)
            for name in ("onnxruntime-cpu-avx2", "onnxruntime-cpu-vnni")}
    with torch.no_grad():
        first = {name: sim(data[0]) for name, sim in sims.items()}
        again = {name: sim(data[0]) for name, sim in reversed(sims.items())}
    for name in sims:
        assert sims[name].runtime.name == name and torch.equal(first[name], again[name])
    assert not torch.equal(first["onnxruntime-cpu-avx2"], first["onnxruntime-cpu-vnni"])
    paths = sims[HOST.name].export(tmp_path)
    lsb = lowbit.fidelity.output_lsb(sims[HOST.name])
    for name, optimize in ((HOST.name, True), ("onnxruntime-cpu-vnni", False)):
        executed = session(paths.qdq_onnx, optimize=optimize).run(None, {"input": data[0].numpy()})[0]
        assert np.abs(first[name].numpy() - executed).max() <= lsb * 1.0001, name


def _pairwise_saturating_conv(stored: torch.Tensor, zero_point: int, weight: torch.Tensor, stride, padding,
                              dilation) -> torch.Tensor:
    """By definition, for groups=1: uint8 inputs times int8 weights along the reduction axis in im2col
    channels-last order (kernel tap, then input channel), adjacent products added and clamped to int16,
    the pair sums added in int64, minus zero_point · Σw (the centred accumulation)."""
    outputs, channels, kernel, _ = weight.shape
    padded = F.pad(stored, [padding] * 4, value=float(zero_point))
    columns = F.unfold(padded, kernel, dilation=dilation, stride=stride)  # (N, C·k·k, L), channel-major
    columns = columns.reshape(len(stored), channels, kernel * kernel, -1).transpose(1, 2).reshape(len(stored), -1,
                                                                                                 columns.shape[-1])
    rows = weight.reshape(outputs, channels, kernel * kernel).transpose(1, 2).reshape(outputs, -1)
    products = columns.double().unsqueeze(1) * rows.double().unsqueeze(0).unsqueeze(-1)  # (N, O, K, L)
    if products.shape[2] % 2:
        products = F.pad(products, [0, 0, 0, 1])
    pairs = products.reshape(*products.shape[:2], -1, 2, products.shape[-1]).sum(3).clamp(-32768, 32767)
    total = pairs.sum(2) - zero_point * rows.double().sum(1).reshape(1, -1, 1)
    side = (stored.shape[-1] + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    return total.reshape(len(stored), outputs, side, side)


@pytest.mark.parametrize("shape", [s for s in CONVS if s[5] == 1], ids=lambda s: "x".join(map(str, s)))
def test_conv_correction_equals_saturating_pairs_by_definition(shape):
    """The saturating form against its definition, on any CPU (this one's onnxruntime need not saturate)."""
    channels, outputs, kernel, stride, padding, _, dilation = shape
    rng = np.random.default_rng(sum(shape) + 1)
    weight = torch.from_numpy(rng.integers(-127, 128, (outputs, channels, kernel, kernel)).astype(np.float32))
    zero_point = int(rng.integers(0, 200))
    stored = torch.from_numpy(rng.integers(0, 256, (2, channels, 12, 12)).astype(np.float32))
    layer = nn.Conv2d(channels, outputs, kernel, stride, padding, dilation, bias=False)
    x = stored - zero_point
    pairs = pair_saturation.layer_pairs(layer, weight, _input_encoding(zero_point))
    exact = F.conv2d(x.double(), weight.double(), None, stride, padding, dilation)
    emulated = exact + (pair_saturation.conv_correction(layer, pairs, x).double() if pairs is not None else 0)
    reference = _pairwise_saturating_conv(stored, zero_point, weight, stride, padding, dilation)
    torch.testing.assert_close(emulated, reference, rtol=0, atol=0)
    assert not torch.equal(exact, reference)  # the case does saturate: the check has teeth


def test_linear_correction_equals_saturating_pairs_by_definition():
    """As for convolutions: adjacent features' products clamped to int16, on any CPU."""
    rng = np.random.default_rng(9)
    features, outputs, zero_point = 97, 40, 23
    weight = torch.from_numpy(rng.integers(-127, 128, (outputs, features)).astype(np.float32))
    stored = torch.from_numpy(rng.integers(0, 256, (5, features)).astype(np.float32))
    x = stored - zero_point
    pairs = pair_saturation.layer_pairs(nn.Linear(features, outputs), weight, _input_encoding(zero_point))
    emulated = x.double() @ weight.double().T + pair_saturation.linear_correction(pairs, x).double()
    products = F.pad(stored.double().unsqueeze(1) * weight.double().unsqueeze(0), [0, 1])  # (N, O, 98)
    reference = products.reshape(5, outputs, -1, 2).sum(3).clamp(-32768, 32767).sum(2) \
        - zero_point * weight.double().sum(1)
    torch.testing.assert_close(emulated, reference, rtol=0, atol=0)
    assert not torch.equal(x.double() @ weight.double().T, reference)
