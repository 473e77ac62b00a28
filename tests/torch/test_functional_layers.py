"""Convolutions and linear layers written as function calls on a model's own parameters become
modules in the sim: their weights get quantizers, BatchNorm folds into them; computed weights are named."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.torch.capture import with_layer_modules

sys.path.insert(0, str(Path(__file__).parent.parent / "fidelity"))
from fidelity_zoo_models import SameConv  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = SameConv(3, 8, 3, 2)
        self.bn = nn.BatchNorm2d(8)
        self.shared = nn.Parameter(torch.randn(8, 8, 1, 1) * 0.3)
        self.standardized = nn.Parameter(torch.randn(4, 8, 3, 3))

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = F.conv2d(F.conv2d(x, self.shared), self.shared)  # one weight, used twice
        weight = (self.standardized - self.standardized.mean((1, 2, 3), keepdim=True))
        return F.conv2d(x, weight, padding=1)  # a computed weight: stays float


def _model():
    torch.manual_seed(0)
    model = Net().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model


def test_module_form_computes_what_the_model_computes():
    model, x = _model(), torch.randn(2, 3, 16, 16)
    rewritten = with_layer_modules(model, x)
    assert isinstance(rewritten.conv.conv, nn.Conv2d) and rewritten.conv.conv.padding == (0, 0)
    assert not hasattr(rewritten.conv, "weight")  # moved into the new module, not held twice
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), rtol=0, atol=0)


def test_functional_weights_are_quantized_and_batchnorm_folds():
    model, data = _model(), [torch.randn(4, 3, 16, 16) for _ in range(2)]
    sim = lowbit.quantize(model, data)
    assert "fold batchnorm: 1 layers" in sim.technique_results
    weights = [p for p in sim.points if p.role == "weight"]
    assert sorted(p.module for p in weights) == ["conv.conv", "shared"]
    assert sim.summary()["float_ops"] == {"Conv": 1}
    assert "weights left in float: Conv ×1" in sim.summary()["note"]
    assert model.conv.weight.shape == (8, 3, 3, 3) and isinstance(model.bn, nn.BatchNorm2d)  # user model untouched
