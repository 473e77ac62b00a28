"""The cpu-int8 preset follows the runtime a sim predicts: 7-bit weights where onnxruntime's u8×s8
kernels add products in int16 pairs (x86 without VNNI), 8-bit weights where the sums are exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.kernels import host_kernels
from lowbit.onnx.quantsim import OnnxQuantSim
from lowbit.target import load_target


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.pointwise = nn.Conv2d(3, 8, 1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.depthwise(torch.relu(self.pointwise(x))).mean((2, 3)))


def _bits(sim) -> dict[str, int]:
    return {sim.point(k).node: q.spec.bits for k, q in sim.quantizers().items() if sim.point(k).role == "weight"}


def test_the_target_takes_the_runtimes_weight_bits():
    preset = load_target("cpu-int8")
    exact = preset.for_runtime("onnxruntime-cpu-vnni")
    assert exact.op("Conv").param("weight").bits == 8
    assert exact.weight_rule("Conv", depthwise=True).default_param.bits == 8
    pairs = preset.for_runtime("onnxruntime-cpu-avx2")
    assert pairs.op("Conv").param("weight").bits == 7 and pairs.weight_rule("Conv", depthwise=True).default_param.bits == 8
    assert load_target("default").for_runtime("onnxruntime-cpu-avx2") == load_target("default")


def test_two_sims_of_one_model_follow_their_runtimes():
    model, example = _Block().eval(), torch.randn(2, 3, 8, 8)
    with_pairs = lowbit.QuantSim(model, example, target="cpu-int8", runtime="onnxruntime-cpu-avx2")
    exact = lowbit.QuantSim(model, example, target="cpu-int8", runtime="onnxruntime-cpu-vnni")
    assert _bits(with_pairs) == {"pointwise": 7, "depthwise": 8, "fc": 7}
    assert _bits(exact) == {"pointwise": 8, "depthwise": 8, "fc": 8}
    named = lowbit.QuantSim(model, example, target="cpu-int8", runtime="onnxruntime-cpu-vnni", param_bits=4)
    assert set(_bits(named).values()) == {4}  # the user's bits win over the runtime's


def test_the_onnx_sim_takes_this_machines_weight_bits(tmp_path):
    path = tmp_path / "block.onnx"
    torch.onnx.export(_Block().eval(), (torch.randn(2, 3, 8, 8),), str(path), dynamo=False)
    sim = OnnxQuantSim(path, target="cpu-int8")
    expected = 7 if host_kernels().int16_pairs else 8
    assert sorted(_bits(sim).values()) == sorted([expected, 8, expected])


def test_a_preset_naming_an_unknown_runtime_is_refused():
    config = load_target("cpu-int8").to_json()
    config["lowbit"]["runtime_param_bits"] = {"onnxruntime-npu": 8}
    with pytest.raises(lowbit.LowbitError, match="onnxruntime-npu"):
        load_target(config)
