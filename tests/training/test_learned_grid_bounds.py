"""Learned activation grids stay inside the range of the ReLU, ReLU6, Hardtanh or clamp they quantize, however
the activation is written, so onnxruntime still removes it and fuses the layer into one integer kernel: the
exported file then computes what the trained sim computes."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.quant.grid_bounds import EPSILON
from lowbit.quant.quantizer import Quantizer
from lowbit.quant.spec import QuantSpec


class Clipped(nn.Module):
    """Four convolutions, each followed by one way of writing a clipping activation."""

    def __init__(self, style: str):
        super().__init__()
        self.style = style
        self.convs = nn.ModuleList(nn.Conv2d(c, 8, 3, padding=1) for c in (3, 8, 8, 8))
        self.relu6, self.relu = nn.ReLU6(), nn.ReLU()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        a, b, c, d = self.convs
        if self.style == "modules":
            x = self.relu(d(self.relu6(c(self.relu(b(self.relu6(a(x))))))))
        else:
            x = torch.clamp(a(x), 0.0, 4.0)
            x = b(x).relu()
            x = F.hardtanh(c(x), 0.0, 3.0)
            x = F.relu6(d(x))
        return self.head(x.mean((2, 3)))


EXPECTED = {"modules": [(0.0, 6.0), (0.0, math.inf), (0.0, 6.0), (0.0, math.inf)],
            "functions": [(0.0, 4.0), (0.0, math.inf), (0.0, 3.0), (0.0, 6.0)]}


def _grid_ends(quantizer) -> tuple[np.float32, np.float32]:
    """The grid's float ends as onnxruntime computes them from the exported scale and zero point (float32)."""
    scale = np.float32(quantizer.scale.item())
    zero_point = np.float32(-int(quantizer.offset))
    top = np.float32(quantizer.spec.levels - 1)
    return scale * (np.float32(0) - zero_point), scale * (top - zero_point)


@pytest.mark.parametrize("style", sorted(EXPECTED))
def test_trained_grids_stay_inside_the_activation_and_the_layers_stay_fused(style, tmp_path):
    torch.manual_seed(0)
    model = Clipped(style).eval()
    data = [torch.randn(8, 3, 16, 16) * 3 for _ in range(2)]
    sim = lowbit.quantize(model, data).learn_ranges()
    bounded = {key: q for key, q in sim.quantizers().items() if q.bounds is not None}
    assert sorted(q.bounds for q in bounded.values()) == sorted(EXPECTED[style])
    with torch.no_grad():  # as steps that pushed every grid outwards: wider, zero point below zero
        for quantizer in bounded.values():
            quantizer.learned_scale.mul_(1.5)
            quantizer.learned_zero_point.add_(5.0)
    loss = sim(data[0]).square().mean()
    loss.backward()
    sim.learn_ranges(False)
    for quantizer in bounded.values():
        low, high = _grid_ends(quantizer)
        assert low >= quantizer.bounds[0] - EPSILON and high <= quantizer.bounds[1] + EPSILON
    paths = sim.export(tmp_path, name=style, verify=data)
    assert paths.fidelity.top1_agreement == 1.0 and paths.fidelity.max_error_lsb <= 1.0, paths.fidelity.row()
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(paths.qdq_onnx), options, providers=["CPUExecutionProvider"])
    kinds = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    assert kinds.count("QLinearConv") == 4 and not {"Clip", "Relu", "FusedConv", "Conv"} & set(kinds), kinds


def test_a_grid_without_bounds_learns_freely():
    """A quantizer outside a sim (no activation known) keeps whatever range it learned."""
    quantizer = Quantizer(QuantSpec(bits=8, symmetric=False))
    quantizer.start_calibration()
    quantizer(torch.linspace(0, 6, 100))
    quantizer.finish_calibration()
    quantizer.learn_ranges()
    with torch.no_grad():
        quantizer.learned_scale.mul_(2.0)
        quantizer.learned_zero_point.add_(7.0)
    quantizer.mode = "quantize"
    quantizer(torch.zeros(3))
    low, high = _grid_ends(quantizer)
    assert low == pytest.approx(-7 * 12 / 255, rel=1e-5) and high == pytest.approx(248 * 12 / 255, rel=1e-5)
