"""Skipping fused activations and reusing integer grids in no-grad mode changes no output."""

import copy

import torch
from torch import nn

import lowbit
from lowbit.quant.encoding import Encoding
from lowbit.quant.quantizer import Quantizer
from lowbit.quant.spec import QuantSpec
from lowbit.torch.grid_follower import ReLU6, link_grid_follower


def _quantizer(scale: float, offset: int) -> Quantizer:
    quantizer = Quantizer(QuantSpec(8, symmetric=False))
    quantizer.encoding = Encoding(quantizer.spec, torch.tensor(scale), torch.tensor(offset))
    quantizer.mode = "quantize"
    return quantizer


def _marked(quantizer: Quantizer, centred: torch.Tensor) -> torch.Tensor:
    x = centred * quantizer.scale
    quantizer.mark_on_grid(x, centred)
    return x


def test_skips_only_where_the_activation_is_the_identity_on_the_grid():
    inside, outside = _quantizer(6 / 255, 0), _quantizer(0.05, -100)  # [0, 6] vs [-5, 7.75]
    holder = nn.Sequential(nn.ReLU6())
    original = holder[0]
    assert link_grid_follower(holder, "0", inside) and link_grid_follower(holder, "0", outside)
    activation = holder[0]
    assert isinstance(activation, ReLU6) and isinstance(activation, nn.ReLU6)
    assert type(original) is nn.ReLU6  # replaced by a copy, never re-classed
    assert not link_grid_follower(nn.Sequential(nn.GELU()), "0", inside)
    with torch.no_grad():
        on_inside = _marked(inside, torch.arange(0.0, 256.0))
        assert activation(on_inside) is on_inside
        on_outside = _marked(outside, torch.arange(-100.0, 156.0))
        result = activation(on_outside)
        assert result is not on_outside and torch.equal(result, on_outside.clamp(0, 6))
        unmarked = torch.arange(0.0, 256.0) * inside.scale
        assert activation(unmarked) is not unmarked
    on_inside = _marked(inside, torch.arange(0.0, 256.0))
    assert activation(on_inside) is not on_inside  # gradient mode: never skipped


def test_grid_integers_need_the_marked_unmodified_tensor_and_the_same_scale():
    quantizer = _quantizer(0.1, -10)
    centred = torch.arange(-10.0, 20.0)
    with torch.no_grad():
        x = _marked(quantizer, centred)
        assert quantizer.grid_integers(x, quantizer.scale) is centred
        assert quantizer.grid_integers(x, torch.tensor(0.2)) is None
        assert quantizer.grid_integers(x.clone(), quantizer.scale) is None
        x.add_(0)
        assert quantizer.grid_integers(x, quantizer.scale) is None


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.relu = nn.ReLU6()  # shared by two fused groups

    def forward(self, x):
        a = self.relu(self.conv1(x))
        return self.conv3(self.relu(self.conv2(a)) + a)


def test_fast_no_grad_path_equals_the_plain_emulation():
    torch.manual_seed(0)
    data = [torch.randn(4, 3, 12, 12) for _ in range(2)]
    sim = lowbit.quantize(_Net().eval(), data, target="cpu-int8")
    assert isinstance(sim.model.get_submodule("relu"), ReLU6)
    with torch.no_grad():
        fast = sim(data[0])
    original = (Quantizer.grid_integers, ReLU6.forward)
    try:
        Quantizer.grid_integers = lambda self, x, scale: None
        ReLU6.forward = nn.ReLU6.forward
        with torch.no_grad():
            plain = sim(data[0])
    finally:
        Quantizer.grid_integers, ReLU6.forward = original
    assert torch.equal(fast, plain)
    with torch.enable_grad():
        assert torch.equal(sim(data[0]).detach(), fast)
    copied = copy.deepcopy(sim.model)  # as the export copies it
    assert copied.get_submodule("relu").grid_quantizers[0] is not sim.model.get_submodule("relu").grid_quantizers[0]
    assert copied.get_submodule("relu").grid_quantizers[0] is copied.get_submodule("activation_quantizers.relu")
    with torch.no_grad():
        assert torch.equal(copied(data[0]), fast)
