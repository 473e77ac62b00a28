"""LiteRT export: the sim's encodings in a .tflite file that LiteRT runs with its int8 kernels, compared with the sim
(PyTorch models with runtime="litert-cpu", Keras models through the ONNX front end), and LiteRT's fixed-point
addition against the sim's emulation of it."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import lowbit
from lowbit.errors import ExportError
from lowbit.quant.encoding import Encoding
from lowbit.quant.spec import QuantSpec

pytest.importorskip("ai_edge_litert", reason="LiteRT export needs the keras extra: pip install 'lowbit[keras]'")

from lowbit.litert import LiteRtModel  # noqa: E402
from lowbit.litert.flatbuffer import TfliteBuilder  # noqa: E402
from lowbit.onnx.fixed_point_adds import fixed_point_adds  # noqa: E402
from lowbit.runtime import session  # noqa: E402
from lowbit.torch.fixed_point_add import fixed_point_add_grid  # noqa: E402


def one_addition(scales, zero_points) -> bytes:
    """A .tflite file: QUANTIZE two float inputs, ADD them on int8 grids, DEQUANTIZE the sum."""
    builder, shape = TfliteBuilder(), (256, 256)
    floats = [builder.tensor(f"f{i}", shape, np.float32) for i in range(2)]
    grids = [builder.tensor(f"q{i}", shape, np.int8, (scales[i], zero_points[i], 0)) for i in range(3)]
    result = builder.tensor("sum", shape, np.float32)
    for i in range(2):
        builder.operator("QUANTIZE", [floats[i]], [grids[i]])
    builder.operator("ADD", grids[:2], [grids[2]], "AddOptions")
    builder.operator("DEQUANTIZE", [grids[2]], [result])
    return builder.finish(floats, [result], "one addition")


def activation_encoding(scale: float, signed_zero_point: int) -> Encoding:
    """An 8-bit asymmetric encoding stored as uint8 (zero point + 128), lowbit's activation form."""
    return Encoding.from_scale_offset(QuantSpec(8, symmetric=False), torch.tensor(scale, dtype=torch.float32),
                                      torch.tensor(-(signed_zero_point + 128)))


@pytest.mark.parametrize("seed", range(4))
def test_the_fixed_point_addition_is_litert_s_on_every_pair_of_int8_values(seed):
    rng = np.random.default_rng(seed)
    scales = np.float32(rng.uniform(0.005, 0.2, 3))
    zero_points = rng.integers(-128, 20, 3)
    a, b = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    floats = [((v - z) * s).astype(np.float32) for v, z, s in ((a, zero_points[0], scales[0]),
                                                                  (b, zero_points[1], scales[1]))]
    executed = LiteRtModel(one_addition(scales, zero_points))(tuple(floats))[0]
    encodings = [activation_encoding(float(s), int(z)) for s, z in zip(scales, zero_points)]
    simulated, _ = fixed_point_add_grid(torch.from_numpy(floats[0]), torch.from_numpy(floats[1]), *encodings)
    np.testing.assert_array_equal(simulated.numpy(), executed)


@pytest.mark.slow
def test_a_pytorch_sim_for_litert_is_what_litert_runs(tmp_path):
    from lowbit.zoo import tiny_resnet
    torch.manual_seed(0)
    data = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    sim = lowbit.quantize(tiny_resnet().eval(), data[:2], runtime="litert-cpu")
    written = sim.export_tflite(tmp_path / "tiny.tflite", verify=data[2:])
    assert written.path.is_file() and written.fidelity.top1_agreement == 1.0
    assert written.fidelity.max_error_lsb == 0.0


def test_grouped_convolutions_run_in_litert_as_simulated(tmp_path):
    """ResNeXt-style grouped convolutions: LiteRT's CONV_2D takes a filter of in_channels / groups inputs."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1, groups=4),
        torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 1, groups=8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(32, 10)).eval()
    data = [torch.randn(16, 3, 16, 16) for _ in range(3)]
    sim = lowbit.quantize(model, data[:2], target="litert-int8")
    written = sim.export_tflite(tmp_path / "grouped.tflite", verify=data[2:])
    assert written.fidelity.top1_agreement == 1.0 and written.fidelity.max_error_lsb <= 1.0
    with torch.no_grad():
        reference = model(data[2]).numpy()
    executed = LiteRtModel(written.path)(data[2])[0]
    assert np.abs(executed - reference).max() <= 0.05 * np.abs(reference).max()  # int8 noise, not another conv


def test_a_softmax_output_runs_in_float_between_quantizers_as_simulated(tmp_path):
    """A classifier ending in Softmax: LiteRT's int8 softmax wants a fixed 1/256 output grid, so the file runs it in
    float between DEQUANTIZE and QUANTIZE, and the litert sim computes it so (not onnxruntime's table softmax)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(16, 10), torch.nn.Softmax(1)).eval()
    data = [torch.randn(32, 3, 16, 16) * 3 for _ in range(4)]
    sim = lowbit.quantize(model, data[:2], target="litert-int8")
    written = sim.export_tflite(tmp_path / "softmax.tflite", verify=data[2:])
    assert written.fidelity.top1_agreement == 1.0 and written.fidelity.max_error_lsb <= 1.0
    probabilities = LiteRtModel(written.path)(data[2])[0]
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=0.05)


class _FunctionalNet(torch.nn.Module):
    """Pads, pools and averages as functions, as many hand-written models do: torch's export computes the pad amounts
    from constants (ConstantOfShape, Concat, Slice...) and writes the mean as a ReduceMean."""

    def __init__(self):
        super().__init__()
        self.stem, self.expand = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.Conv2d(16, 32, 1)
        self.classifier = torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.nn.functional.pad(torch.relu(self.stem(x)), (1, 1, 1, 1)), 3, 2)
        return self.classifier(torch.relu(self.expand(x)).mean((2, 3)))


def test_computed_pad_amounts_and_a_spatial_mean_run_in_litert_as_simulated(tmp_path):
    torch.manual_seed(0)
    data = [torch.randn(16, 3, 32, 32) for _ in range(3)]
    sim = lowbit.quantize(_FunctionalNet().eval(), data[:2], target="litert-int8")
    written = sim.export_tflite(tmp_path / "functional.tflite", verify=data[2:])
    assert written.fidelity.top1_agreement == 1.0 and written.fidelity.max_error_lsb <= 1.0


@pytest.mark.slow
def test_integer_io_takes_and_gives_int8_on_the_sim_s_grids(tmp_path):
    """With ``integer_io`` the file has no float at its edges: int8 input and output on the grids of the QDQ
    export's input and output quantizers, and the same integers inside as the float-I/O file."""
    from lowbit.zoo import tiny_resnet
    torch.manual_seed(0)
    data = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    sim = lowbit.quantize(tiny_resnet().eval(), data[:2], runtime="litert-cpu")
    floating = LiteRtModel(sim.export_tflite(tmp_path / "float_io.tflite").path)
    written = sim.export_tflite(tmp_path / "int_io.tflite", verify=data[2:], integer_io=True)
    assert written.fidelity.top1_agreement == 1.0 and written.fidelity.max_error_lsb <= 1.0
    integer = LiteRtModel(written.path)
    qdq = onnx.load(str(sim.export(tmp_path / "qdq", "tiny").qdq_onnx))
    constants = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    constants |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                  for n in qdq.graph.node if n.op_type == "Constant"}
    first = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == qdq.graph.input[0].name)
    last = next(n for n in qdq.graph.node if n.output[0] == qdq.graph.output[0].name)
    details = integer.interpreter.get_input_details() + integer.interpreter.get_output_details()
    for detail, node in zip(details, (first, last)):
        stored = constants[node.input[2]]
        zero_point = stored.astype(np.int64) - (128 if stored.dtype == np.uint8 else 0)
        assert detail["dtype"] == np.int8
        assert detail["quantization"] == (pytest.approx(float(constants[node.input[1]]), rel=1e-7), int(zero_point))
    scale = integer.interpreter.get_output_details()[0]["quantization"][0]
    for batch in data:
        difference = np.abs(integer(batch)[0] - floating(batch)[0]).max()
        assert difference <= scale * 1.001  # input rounding ties may move one step


def weight_integers(path) -> list[np.ndarray]:
    """The per-channel int8 constants (convolution and dense weights) of a .tflite file."""
    interpreter = LiteRtModel(path).interpreter
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_tensor_details()
            if d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) > 1]


@pytest.mark.slow
def test_litert_weights_keep_off_minus_128_after_sequential_mse_adaround_and_qat(tmp_path):
    """LiteRT's spec reserves −128 in weights: the litert-int8 target's strict symmetric grids never use it, where the
    same target without strict_symmetric does after sequential MSE (its clipped grids reach the bottom)."""
    from lowbit.zoo import tiny_resnet
    torch.manual_seed(0)
    data = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    full = json.loads(resources.files("lowbit.target").joinpath("presets/litert-int8.json").read_text())
    full["defaults"]["strict_symmetric"] = "False"
    lowest = {}
    for name, target in (("strict", "litert-int8"), ("full", full)):
        sim = lowbit.quantize(tiny_resnet().eval(), data[:2], target=target, techniques=["sequential_mse"])
        lowbit.adaround(sim, data[:2], num_iterations=20)
        ptq = sim.export_tflite(tmp_path / "ptq.tflite").path
        lowest[f"{name} ptq"] = min(int(w.min()) for w in weight_integers(ptq))
        lowbit.qat(sim, data[:2], steps=2, lr=1e-3)
        written = sim.export_tflite(tmp_path / f"{name}.tflite", verify=data[2:])
        assert written.fidelity.top1_agreement == 1.0 and written.fidelity.max_error_lsb <= 1.0
        lowest[f"{name} qat"] = min(int(w.min()) for w in weight_integers(written.path))
    assert lowest["strict ptq"] == lowest["strict qat"] == -127, lowest
    assert lowest["full ptq"] == -128, lowest


@pytest.mark.slow
def test_mobilenet_v2_in_litert_agrees_with_its_sim(tmp_path, calibration_batches, eval_batches):
    from lowbit.zoo import pretrained_mobilenet_v2
    sim = lowbit.quantize(pretrained_mobilenet_v2().eval(), calibration_batches, runtime="litert-cpu")
    written = sim.export_tflite(tmp_path / "mobilenet_v2.tflite", verify=eval_batches)
    assert written.fidelity.top1_agreement == 1.0 and written.fidelity.max_error_lsb <= 1.0
    assert written.path.stat().st_size < 4.5e6  # int8 weights: a quarter of the float model's 14 MB


@pytest.mark.slow
def test_a_grid_litert_has_no_kernel_for_is_one_line_and_no_file(tmp_path):
    from lowbit.zoo import tiny_resnet
    data = [torch.randn(4, 3, 32, 32)]
    sim = lowbit.quantize(tiny_resnet().eval(), data, target="w8a16")
    with pytest.raises(ExportError, match="LiteRT"):
        sim.export_tflite(tmp_path / "tiny.tflite")
    assert list(tmp_path.iterdir()) == []


def quantized_addition(scales, zero_points) -> onnx.ModelProto:
    """A QDQ graph: two float inputs quantized to uint8, added, quantized to uint8 and dequantized."""
    grids = [(numpy_helper.from_array(np.array(s, np.float32), f"s{i}"),
              numpy_helper.from_array(np.array(z + 128, np.uint8), f"z{i}"))
             for i, (s, z) in enumerate(zip(scales, zero_points))]
    nodes = [helper.make_node("QuantizeLinear", ["x0", "s0", "z0"], ["q0"]),
             helper.make_node("QuantizeLinear", ["x1", "s1", "z1"], ["q1"]),
             helper.make_node("DequantizeLinear", ["q0", "s0", "z0"], ["d0"]),
             helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["d1"]),
             helper.make_node("Add", ["d0", "d1"], ["sum"]),
             helper.make_node("QuantizeLinear", ["sum", "s2", "z2"], ["q2"]),
             helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["y"])]
    inputs = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, (256, 256)) for i in range(2)]
    graph = helper.make_graph(nodes, "addition", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [t for grid in grids for t in grid])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("seed", range(2))
def test_the_onnx_sim_s_fixed_point_addition_is_litert_s_on_every_pair(seed):
    rng = np.random.default_rng(10 + seed)
    scales = np.float32(rng.uniform(0.005, 0.2, 3))
    zero_points = rng.integers(-128, 20, 3)
    a, b = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    floats = tuple(((v - z) * s).astype(np.float32) for v, z, s in ((a, zero_points[0], scales[0]),
                                                                      (b, zero_points[1], scales[1])))
    executed = LiteRtModel(one_addition(scales, zero_points))(floats)[0]
    rewritten = fixed_point_adds(quantized_addition(scales, zero_points))
    assert all(n.output[0] != "sum" for n in rewritten.graph.node)  # the float Add is gone
    simulated = session(rewritten.SerializeToString()).run(None, {"x0": floats[0], "x1": floats[1]})[0]
    np.testing.assert_array_equal(simulated, executed)


@pytest.mark.slow
def test_an_onnx_sim_for_litert_is_what_litert_runs(tmp_path):
    from lowbit.zoo import tiny_resnet
    torch.manual_seed(1)
    data = [torch.randn(8, 3, 32, 32).numpy() for _ in range(4)]
    onnx_file = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_resnet().eval(), (torch.from_numpy(data[0]),), str(onnx_file), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    sim = lowbit.quantize(str(onnx_file), data[:2], runtime="litert-cpu")
    for integer_io in (False, True):
        written = sim.export_tflite(tmp_path / "tiny.tflite", verify=data[2:], integer_io=integer_io)
        assert written.fidelity.top1_agreement == 1.0 and written.fidelity.max_error_lsb <= float(integer_io)


@pytest.mark.slow
def test_the_litert_target_predicts_litert_with_strict_symmetric_per_channel_weights():
    from lowbit.zoo import tiny_resnet
    sim = lowbit.quantize(tiny_resnet().eval(), [torch.randn(4, 3, 32, 32)], target="litert-int8")
    assert sim.runtime.name == "litert-cpu"
    specs = {q.spec for key, q in sim.quantizers().items() if sim.point(key).role == "weight"}
    assert specs == {QuantSpec(8, symmetric=True, axis=0, strict=True)}
