"""A Linear after Flatten runs as onnxruntime's integer QGemm: the export writes Flatten(axis=1) as
Reshape, which onnxruntime fuses across, and the sim computes that QGemm (int32 bias, and the int16
pair saturation of CPUs without VNNI) also when the logits stay float."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import lowbit
from lowbit.target import load_target


def _model() -> nn.Module:
    """Conv → ReLU → pool → Flatten → Linear whose weights are large and of one sign per output, so
    adjacent products of large pooled inputs overflow int16 on a saturating CPU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.uniform_(0.0, 0.2)
        model[4].weight.uniform_(0.8, 1.0)
        model[4].weight[1::2] *= -1
    return model.eval()


def _float_logits_target():
    config = load_target("default").to_json()
    config["model_output"] = {"is_output_quantized": "False"}
    return load_target(config)


@pytest.mark.parametrize("target", ["default", "float-logits"])
def test_linear_after_flatten_is_integer_in_onnxruntime_and_in_the_sim(tmp_path, target):
    data = [torch.rand(16, 3, 12, 12) * torch.linspace(0.1, 1.0, 16).reshape(-1, 1, 1, 1)]
    sim = lowbit.QuantSim(_model(), data[0][:1], target=_float_logits_target() if target == "float-logits"
                          else "default").calibrate(data)
    paths = sim.export(tmp_path, "model")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(paths.qdq_onnx), options, providers=["CPUExecutionProvider"])
    kinds = collections.Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    assert kinds["QGemm"] == 1 and kinds["Flatten"] == 0 and kinds["Gemm"] == 0
    executed = session.run(None, {session.get_inputs()[0].name: data[0].numpy()})[0]
    with torch.no_grad():
        simulated = sim(data[0]).numpy()
        exact = None
        if sim.runtime.int16_pairs:
            sim.runtime = "onnxruntime-cpu-vnni"
            exact = sim(data[0]).numpy()
    tolerance = 1e-4 * np.abs(executed).max()
    np.testing.assert_allclose(simulated, executed, rtol=0, atol=tolerance)
    if exact is not None:  # the case saturates here: without the emulation the sim would be off
        assert np.abs(exact - executed).max() > 100 * tolerance
