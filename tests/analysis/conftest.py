"""A small CNN with one planted sensitive layer, shared by the analysis tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit import kernels


@pytest.fixture(scope="module", autouse=True)
def exact_integer_kernels():
    """Sims made without a runtime predict a CPU whose u8×s8 kernels do not saturate (VNNI), as if this
    machine were one: there the planted layer is the only sensitive one; on a CPU without VNNI, 8-bit
    weights saturate in conv1 too, and analysis rightly ranks that first."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels, "host_kernels", lambda: kernels.KERNELS["onnxruntime-cpu-vnni"])
        yield


MACHINE_KERNELS = kernels.host_kernels()  # read when the tests are collected, before any replaces it


@pytest.fixture(scope="session")
def machine_kernels():
    """The kernels onnxruntime runs on this machine."""
    return MACHINE_KERNELS


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.conv3(x).mean((2, 3)))


@pytest.fixture(scope="module")
def planted():
    """SmallNet (no biases) whose conv2 output channel 0 is a constant 200 that conv3 never reads: the
    8-bit range of relu2 is set by it, so every channel that matters gets a coarse grid."""
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():
        for module in (model.conv1, model.conv2, model.conv3, model.fc):
            module.bias.zero_()
        model.conv2.weight[0] = 0
        model.conv2.bias[0] = 200
        model.conv3.weight[:, 0] = 0
    data = [torch.randn(8, 3, 12, 12) for _ in range(3)]
    return model, data
