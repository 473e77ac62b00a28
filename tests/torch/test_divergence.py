"""When sim and onnxruntime part, the export names the first quantizer where they do."""

from __future__ import annotations

import torch
from torch import nn

import lowbit


def _model():
    """A 1x1 conv that cannot saturate int16 pairs (one non-zero weight per output channel), then a
    3x3 conv whose 8-bit weights all have the same sign, so most adjacent pairs can."""
    model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(8).reshape(8, 8, 1, 1))
        model[0].bias.zero_()
        model[2].weight.fill_(0.5)
    return model


def test_the_first_parting_quantizer_is_named(tmp_path):
    torch.manual_seed(0)
    data = [torch.rand(8, 8, 8, 8) * 3 for _ in range(2)]
    sim = lowbit.quantize(_model(), data)
    same = sim.export(tmp_path / "same", verify=data)
    assert same.fidelity.divergence == "" and same.fidelity.max_error_lsb <= 1.0001
    sim.runtime = "onnxruntime-cpu-vnni" if sim.runtime.int16_pairs else "onnxruntime-cpu-avx2"  # the other kind
    other = sim.export(tmp_path / "other", verify=data)
    assert other.fidelity.max_error_lsb > 1.0
    assert other.fidelity.divergence.startswith("_3 (tensor /3/Relu_output_0): ")
    assert "first divergence: _3" in other.fidelity.row()
