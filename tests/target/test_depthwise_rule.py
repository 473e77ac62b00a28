"""cpu-int8 gives depthwise convolutions 8-bit weights (their x86 kernel cannot saturate) and every
other layer 7-bit where the runtime's int16 pairs saturate, in both front ends; a param_bits override
applies to depthwise layers too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.kernels import host_kernels
from lowbit.onnx import OnnxQuantSim
from lowbit.target import load_target


class DepthwiseBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.pointwise = nn.Conv2d(3, 8, 1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.grouped(torch.relu(self.depthwise(torch.relu(self.pointwise(x))))))
        return self.fc(x.mean((2, 3)))


def _weight_bits(sim) -> dict[str, int]:
    return {sim.point(k).node: q.spec.bits for k, q in sim.quantizers().items() if sim.point(k).role == "weight"}


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    torch.manual_seed(0)
    model = DepthwiseBlock().eval()
    path = tmp_path_factory.mktemp("depthwise") / "block.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}})
    return model, path


def test_torch_sim_gives_only_the_depthwise_conv_8_bits(block):
    model, _ = block
    sim = lowbit.QuantSim(model, torch.randn(1, 3, 8, 8), target="cpu-int8", runtime="onnxruntime-cpu-avx2")
    assert _weight_bits(sim) == {"pointwise": 7, "depthwise": 8, "grouped": 7, "fc": 7}
    overridden = lowbit.QuantSim(model, torch.randn(1, 3, 8, 8), target="cpu-int8", param_bits=4)
    assert set(_weight_bits(overridden).values()) == {4}


def test_onnx_sim_gives_only_the_depthwise_conv_8_bits(block):
    _, path = block
    bits = _weight_bits(OnnxQuantSim(path, target="cpu-int8"))
    other = 7 if host_kernels().int16_pairs else 8  # the preset follows this machine's kernels
    assert bits == {"/pointwise/Conv": other, "/depthwise/Conv": 8, "/grouped/Conv": other, "/fc/Gemm": other}
    assert set(_weight_bits(OnnxQuantSim(path, target="cpu-int8", param_bits=4)).values()) == {4}


def test_the_rule_is_only_for_depthwise_convolutions():
    target = load_target("cpu-int8")
    assert target.weight_rule("Conv", depthwise=True).default_param.bits == 8
    assert target.weight_rule("Conv", depthwise=False).default_param.bits == 7
    assert load_target("default").weight_rule("Conv", depthwise=True).default_param.bits == 8
    assert load_target("w4a8").weight_rule("Conv", depthwise=True).default_param.bits == 4
