"""MAC counts equal a hand count: a convolution's output positions × its window, grouped and transposed
convolutions and a Linear on a sequence included; low-rank replacements cost what their factors say."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.compression import model_costs, spatial_svd, weight_svd


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        y = self.bn(self.up(self.depthwise(self.conv(x))))
        return self.head(y.flatten(2).transpose(1, 2))


def test_macs_are_the_hand_count_and_the_model_is_left_as_it_was():
    model = Net().train()
    costs = model_costs(model, torch.randn(3, 3, 16, 16))
    conv = 8 * 8 * 8 * (3 * 3 * 3)           # 8 outputs at 8×8, each a 3·3·3 window
    depthwise = 8 * 8 * 8 * (1 * 3 * 3)       # one input channel per group
    up = 8 * 8 * 8 * (4 * 2 * 2)             # each of 8×8×8 inputs scatters into 4 outputs × 2×2
    head = 16 * 16 * 5 * 4                   # 256 positions × 5 outputs × 4 inputs
    assert costs.layers == {"conv": (conv, 8 * 27 + 8), "depthwise": (depthwise, 8 * 9 + 8),
                            "up": (up, 8 * 4 * 4 + 4), "head": (head, 5 * 4 + 5)}
    assert costs.macs == conv + depthwise + up + head
    assert costs.params == sum(p.numel() for p in model.parameters())
    assert model.training and int(model.bn.num_batches_tracked) == 0


def test_replacements_cost_what_their_factors_say():
    layer = nn.Conv2d(16, 32, 3, padding=1)
    x = torch.randn(1, 16, 10, 10)
    full = model_costs(layer, x).macs
    assert full == 100 * 32 * 16 * 9
    assert model_costs(spatial_svd(layer, 6), x).macs == 100 * 6 * 16 * 3 + 100 * 32 * 6 * 3
    assert model_costs(weight_svd(layer, 6), x).macs == 100 * 6 * 16 * 9 + 100 * 32 * 6
