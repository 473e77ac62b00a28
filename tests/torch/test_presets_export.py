"""Every preset target quantizes, exports, and runs in onnxruntime as the sim predicts."""

import pytest
import torch

import lowbit
from lowbit.fidelity import measure_fidelity
from lowbit.zoo import tiny_resnet


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = tiny_resnet().eval()
    return model, [torch.randn(8, 3, 32, 32) for _ in range(3)]


@pytest.mark.slow
@pytest.mark.parametrize("target", lowbit.preset_names())
def test_preset_export_runs_as_simulated(model_and_data, target, tmp_path):
    model, data = model_and_data
    sim = lowbit.quantize(model, data, target=target)
    paths = sim.export(tmp_path, name=target)
    fidelity = measure_fidelity(sim, paths.qdq_onnx, data)
    print(f"\n{target}: {fidelity.row()}")
    assert fidelity.top1_agreement == 1.0
    limit = 0.01 if target == "transformer" else (8.0 if sim.target.default_act_bits == 16 else 1.001)
    measured = fidelity.max_abs_error if target == "transformer" else fidelity.max_error_lsb
    assert measured <= limit
