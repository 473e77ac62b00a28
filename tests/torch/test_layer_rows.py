"""Layers as rows: sampled input patches times the weight give the layer's own output values."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from lowbit.algorithms.layer_rows import layer_groups, rows_forward, rows_unsupported, sample_rows
from lowbit.algorithms.row_cache import RowCache

LAYERS = [
    lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1),
    lambda: nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6),
    lambda: nn.Conv2d(6, 4, (3, 1), padding="same", groups=2, bias=False),
    lambda: nn.Conv2d(6, 4, 3, padding=1, padding_mode="reflect"),
    lambda: nn.Conv2d(6, 4, 2, stride=(2, 1), padding="valid"),
    lambda: nn.Conv1d(6, 4, 5, padding=2, padding_mode="circular"),
    lambda: nn.Linear(6, 5),
]


@pytest.mark.parametrize("make_layer", LAYERS)
def test_rows_reproduce_the_layer_output(make_layer):
    torch.manual_seed(0)
    layer = make_layer()
    x = torch.randn(3, 6, 9, 7) if isinstance(layer, nn.Conv2d) else torch.randn(3, 6, 11)
    if isinstance(layer, nn.Linear):
        x = torch.randn(3, 7, 6)
    with torch.no_grad():
        y = layer(x)
    inputs, outputs = sample_rows(layer, x, y, 40, torch.Generator().manual_seed(1))
    assert inputs.shape[0] == outputs.shape[0] == min(40, y.numel() // layer.weight.shape[0])
    computed = rows_forward(inputs, layer.weight.detach(), None if layer.bias is None else layer.bias.detach(),
                            layer_groups(layer))
    torch.testing.assert_close(computed, outputs, rtol=1e-5, atol=1e-5)


def test_unsupported_layers_are_named():
    class PaddedConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (1, 0, 1, 0)))

    assert rows_unsupported(nn.Conv2d(2, 2, 1)) is None
    assert "Conv3d" in rows_unsupported(nn.Conv3d(2, 2, 1))
    assert "overrides forward" in rows_unsupported(PaddedConv(2, 2, 3))


@pytest.mark.parametrize("memory_limit", [1 << 30, 16])
def test_row_cache_keeps_rows_in_memory_or_on_disk(memory_limit):
    rows = torch.arange(60, dtype=torch.float32).reshape(10, 2, 3)
    targets = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    with RowCache(8, (2, 3), (4,), memory_limit) as cache:
        cache.append(rows[:5], targets[:5])
        cache.append(rows[5:], targets[5:])
        assert cache.on_disk == (memory_limit == 16)
        stored_rows, stored_targets = cache.all("cpu")
        assert torch.equal(stored_rows, rows[:8]) and torch.equal(stored_targets, targets[:8])
        drawn_rows, drawn_targets = cache.sample(32, torch.Generator().manual_seed(0), "cpu")
        index = drawn_targets[:, 0].long() // 4
        assert torch.equal(drawn_rows, rows[index]) and bool((index < 8).all())
        path = cache._path
    assert path is None or not os.path.exists(path)
