"""``torch.compile(sim)`` computes what the sim computes: the compiled graph sees the plain integer
emulation (the eager fast path stands aside while compiling), which gives the same values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit


class _Residual(nn.Module):
    """Conv-BN-ReLU, a residual add of two quantized tensors, pooling and a Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.body(x)
        return self.head(x.mean((2, 3)))


@pytest.mark.slow
def test_compiled_sim_equals_the_sim():
    torch.manual_seed(0)
    data = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    sim = lowbit.quantize(_Residual().eval(), data[:2], runtime="onnxruntime-cpu-vnni")
    compiled = torch.compile(sim)
    with torch.no_grad():
        for batch in data:
            assert torch.equal(compiled(batch), sim(batch))
