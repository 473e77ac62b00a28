"""The ONNX front end on the real MobileNetV2 (the torch front end's FP32 export): the same target and
photos must give the same encodings as the torch front end, and the QDQ file must compute what the
simulation computes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import lowbit
from lowbit.onnx import OnnxQuantSim
from lowbit.quant.encodings_file import read_encodings
from lowbit.runtime import session


@pytest.fixture(scope="module")
def onnx_sim(mobilenet_export, calibration_batches):
    """The ONNX front end's cpu-int8 sim of the torch front end's FP32 MobileNetV2 export."""
    return OnnxQuantSim(mobilenet_export.onnx, target="cpu-int8", threads=2).calibrate(calibration_batches)


@pytest.fixture(scope="module")
def onnx_export(onnx_sim, tmp_path_factory):
    return onnx_sim.export(tmp_path_factory.mktemp("onnx_export"), name="mobilenet_v2")


@pytest.mark.slow
def test_same_tensors_get_the_same_encodings_as_in_the_torch_front_end(mobilenet_export, onnx_export):
    torch_file, onnx_file = read_encodings(mobilenet_export.encodings), read_encodings(onnx_export.encodings)
    assert onnx_file.params.keys() == torch_file.params.keys()
    assert onnx_file.activation.keys() == torch_file.activation.keys()
    for name, expected in torch_file.params.items():
        torch.testing.assert_close(onnx_file.params[name].scale, expected.scale, rtol=1e-6, atol=0)
    for name, expected in torch_file.activation.items():
        got = onnx_file.activation[name]
        # onnxruntime and torch sum convolutions in different orders: ranges agree to float rounding
        torch.testing.assert_close(got.scale, expected.scale, rtol=1e-4, atol=0)
        assert (got.offset - expected.offset).abs().max() <= 1, name


@pytest.mark.slow
def test_qdq_file_computes_what_the_simulation_computes(onnx_sim, onnx_export, eval_batches):
    runtime = session(onnx_export.qdq_onnx, threads=2)
    for batch in eval_batches[:2]:
        (simulated,) = onnx_sim(batch)
        (executed,) = runtime.run(None, {runtime.get_inputs()[0].name: batch.numpy()})
        np.testing.assert_array_equal(simulated, executed)


@pytest.mark.slow
def test_with_the_torch_front_ends_encodings_the_qdq_models_are_bit_identical(mobilenet_export, eval_batches):
    """Loaded with the verb both front ends share, ``lowbit.load_encodings(sim, path)``."""
    sim = lowbit.load_encodings(OnnxQuantSim(mobilenet_export.onnx, target="cpu-int8", threads=2),
                                mobilenet_export.encodings)
    torch_runtime = session(mobilenet_export.qdq_onnx, threads=2)
    batch = eval_batches[0].numpy()
    (expected,) = torch_runtime.run(None, {torch_runtime.get_inputs()[0].name: batch})
    np.testing.assert_array_equal(sim(batch)[0], expected)


@pytest.mark.slow
def test_agreement_with_fp32_matches_the_torch_front_end(onnx_sim, mobilenet_sim, mobilenet, eval_batches):
    # The encodings above differ from the torch front end's in the last bits of a few scales (the two
    # runtimes sum convolutions in different orders), and such 1-ULP differences flip a few percent of
    # the top-1 predictions between the two QDQ models; agreement with FP32 stays alike.
    with torch.no_grad():
        reference = torch.cat([mobilenet(b) for b in eval_batches]).argmax(1).numpy()
        torch_top1 = torch.cat([mobilenet_sim(b) for b in eval_batches]).argmax(1).numpy()
    onnx_top1 = np.concatenate([onnx_sim(b)[0] for b in eval_batches]).argmax(1)
    torch_agreeing, onnx_agreeing = int((torch_top1 == reference).sum()), int((onnx_top1 == reference).sum())
    assert onnx_agreeing >= 0.85 * len(reference), (onnx_agreeing, torch_agreeing)
    assert abs(onnx_agreeing - torch_agreeing) <= 0.03 * len(reference), (onnx_agreeing, torch_agreeing)


def test_qdq_weights_are_integers_on_the_output_channel_axis(onnx_sim, onnx_export):
    model = onnx.load(onnx_export.qdq_onnx)
    initializers = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(convs) == 53
    for node in convs:
        weight_dq = producers[node.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        stored = numpy_helper.to_array(initializers[weight_dq.input[0]])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        depthwise = group > 1 and stored.shape[:2] == (group, 1)  # cpu-int8: 8-bit depthwise, 7-bit where pairs saturate
        bound = 128 if depthwise or not onnx_sim.runtime.int16_pairs else 64
        assert stored.dtype == np.int8 and stored.min() >= -bound and stored.max() <= bound - 1, node.name
        assert [a.i for a in weight_dq.attribute if a.name == "axis"] == [0], node.name
        bias_dq = producers[node.input[2]]
        assert initializers[bias_dq.input[0]].data_type == onnx.TensorProto.INT32


def test_mean_minmax_keeps_the_full_range_on_the_returned_logits(mobilenet_export):
    # the export returns Identity(Gemm output): the Gemm output is what the model returns
    sim = OnnxQuantSim(mobilenet_export.onnx, scheme="mean_minmax")
    schemes = {sim.point(k).op_type: q.scheme for k, q in sim.quantizers().items() if sim.point(k).role == "output"}
    assert schemes["Gemm"] == "minmax" and schemes["Conv"] == "mean_minmax" and schemes["Clip"] == "mean_minmax"


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["minmax", "mean_minmax", "percentile"])
def test_batches_run_in_slices_give_the_encodings_of_whole_batches(mobilenet_export, calibration_batches,
                                                                   monkeypatch, scheme):
    """Calibration runs each batch of 16 images as two slices of 8 (MobileNetV2's largest tensor is
    4.8 MB per 224 x 224 image, sized from the data: the export's H x W are dynamic); with slicing off
    the encodings are the same."""
    import lowbit.onnx.calibrate as calibrate
    sliced = OnnxQuantSim(mobilenet_export.onnx, scheme=scheme, threads=2).calibrate(calibration_batches)
    feed = {sliced.inputs.names[0]: calibration_batches[0].numpy()}
    largest = max(calibrate._bytes_per_sample(calibrate.sized_for(sliced._with_quantized_weights(), feed)).values())
    assert largest == 96 * 112 * 112 * 4 and calibrate.SLICE_BYTES // largest == 8
    monkeypatch.setattr(calibrate, "SLICE_BYTES", 1 << 40)
    whole = OnnxQuantSim(mobilenet_export.onnx, scheme=scheme, threads=2).calibrate(calibration_batches)
    assert sliced._quantizers.keys() == whole._quantizers.keys()
    for key, quantizer in whole._quantizers.items():
        torch.testing.assert_close(sliced._quantizers[key].encoding.scale, quantizer.encoding.scale,
                                   rtol=1e-6, atol=0, msg=key)
        assert torch.equal(sliced._quantizers[key].encoding.offset, quantizer.encoding.offset), key


def test_two_convolutions_sharing_one_bias_each_get_their_int32_bias(tmp_path):
    """Exporters share equal constants (zero biases above all); each Conv's int32 bias is on its own grid."""
    generator = np.random.default_rng(0)
    tensor = lambda name, shape: numpy_helper.from_array(generator.normal(size=shape).astype(np.float32), name)
    nodes = [onnx.helper.make_node("Conv", ["x", "w1", "b"], ["h"], pads=[1, 1, 1, 1]),
             onnx.helper.make_node("Relu", ["h"], ["r"]),
             onnx.helper.make_node("Conv", ["r", "w2", "b"], ["y"], pads=[1, 1, 1, 1])]
    graph = onnx.helper.make_graph(
        nodes, "shared_bias", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [tensor("w1", (4, 3, 3, 3)), tensor("w2", (4, 4, 3, 3)), tensor("b", (4,))])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    data = [generator.normal(size=(4, 3, 8, 8)).astype(np.float32) for _ in range(2)]
    paths = lowbit.quantize(model, data, techniques=()).export(tmp_path, "shared", verify=data)
    qdq = onnx.load(str(paths.qdq_onnx))
    biases = [n.input[2] for n in qdq.graph.node if n.op_type == "Conv"]
    assert len(set(biases)) == 2
    assert paths.fidelity.outputs[0].max_error_lsb == 0.0


def test_convolutions_after_a_padded_max_pool_run_in_integer_kernels(tmp_path):
    """ResNet's stem (Pad → MaxPool → Conv, as tf2onnx writes it): onnxruntime runs a Conv in its integer kernel only
    where a DequantizeLinear feeds it directly, so the export requantizes the pooled values on their own grid."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
                                torch.nn.ZeroPad2d(1), torch.nn.MaxPool2d(3, 2), torch.nn.Conv2d(16, 32, 1),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(32, 10)).eval()
    path = tmp_path / "stem.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    data = [np.random.default_rng(seed).normal(size=(8, 3, 32, 32)).astype(np.float32) for seed in range(3)]
    sim = lowbit.quantize(str(path), data[:2], techniques=())
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(sim.split().qdq_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ran = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ran.count("QLinearConv") == 2 and "Conv" not in ran and "FusedConv" not in ran
