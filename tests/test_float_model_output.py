"""``model_output.is_output_quantized: "False"`` keeps the tensors a model returns in float, in both front
ends, in the simulation and in the QDQ file onnxruntime runs (MobileNetV2's logits)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import lowbit
from lowbit.onnx import OnnxQuantSim
from lowbit.quant.encodings_file import read_encodings
from lowbit.runtime import session
from lowbit.target import load_target


@pytest.fixture(scope="module")
def float_output_target():
    return load_target({**load_target("cpu-int8").to_json(), "model_output": {"is_output_quantized": "False"}})


@pytest.fixture(scope="module")
def torch_sim(mobilenet, calibration_batches, float_output_target):
    return lowbit.quantize(mobilenet, calibration_batches, example_input=calibration_batches[0][:1],
                           target=float_output_target)


@pytest.fixture(scope="module")
def torch_export(torch_sim, tmp_path_factory):
    return torch_sim.export(tmp_path_factory.mktemp("float_logits"), name="float_logits")


def _run(path, batch) -> np.ndarray:
    runtime = session(path, threads=2)
    return runtime.run(None, {runtime.get_inputs()[0].name: batch.numpy()})[0]


def _distinct_logits(logits) -> int:
    return len(np.unique(np.asarray(logits, dtype=np.float32)))


def _returned_by(path) -> str:
    model = onnx.load(str(path))
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer[model.graph.output[0].name]
    while node.op_type == "Identity":
        node = producer[node.input[0]]
    return node.op_type


def test_preset_flags_read_as_aimet_does(float_output_target):
    assert float_output_target.model_output_float and not float_output_target.model_output_quantized
    assert not load_target("cpu-int8").model_output_float  # "True": quantized
    assert not load_target({**load_target("cpu-int8").to_json(), "model_output": {}}).model_output_float


@pytest.mark.slow
def test_torch_sim_returns_float_logits_that_onnxruntime_reproduces(torch_sim, torch_export, mobilenet_sim,
                                                                   eval_batches):
    with torch.no_grad():
        logits = torch_sim(eval_batches[0]).numpy()
        quantized_logits = mobilenet_sim(eval_batches[0]).numpy()
    assert _distinct_logits(quantized_logits) <= 256  # one 8-bit grid
    assert _distinct_logits(logits) > 10 * 256
    assert _returned_by(torch_export.qdq_onnx) == "Gemm"
    executed = _run(torch_export.qdq_onnx, eval_batches[0])
    assert (executed.argmax(1) == logits.argmax(1)).mean() >= 0.96
    assert np.abs(executed - logits).max() < 0.05 * np.abs(logits).max()


@pytest.mark.slow
def test_onnx_sim_leaves_out_the_same_quantizer(torch_export, calibration_batches, float_output_target,
                                                eval_batches, tmp_path):
    sim = OnnxQuantSim(torch_export.onnx, target=float_output_target, threads=2).calibrate(calibration_batches)
    paths = sim.export(tmp_path, name="float_logits")
    assert read_encodings(paths.encodings).activation.keys() == read_encodings(torch_export.encodings).activation.keys()
    assert _returned_by(paths.qdq_onnx) == "Gemm"
    executed = _run(paths.qdq_onnx, eval_batches[0])
    np.testing.assert_array_equal(sim(eval_batches[0])[0], executed)
    assert _distinct_logits(executed) > 10 * 256
