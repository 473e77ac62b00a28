"""Channel pruning: keeping every channel changes nothing; the channels a chain keeps compute exactly what they
did; the least-squares refit beats plain removal; MACs drop by the hand count; chains a residual or a shared
layer feeds are refused with the reason, and the pretrained MobileNetV2's depthwise chains prune."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.compression import model_costs, prunable_layers, prune_channels
from lowbit.compression.channels import ChannelChain
from lowbit.errors import SpecError


class PadRight(nn.Conv2d):
    """A convolution that pads in its own forward (right and bottom), as TF-style 'same' models do."""

    def forward(self, x):
        return self._conv_forward(F.pad(x, (0, 1, 0, 1)), self.weight, self.bias)


class Chain(nn.Module):
    """Expand (own padding) → BN → ReLU6 → depthwise → BN → ReLU → project, and a residual-fed head."""

    def __init__(self):
        super().__init__()
        self.expand = PadRight(3, 16, 2)
        self.bn1 = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.project = nn.Conv2d(16, 8, 1)
        self.side = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        y = F.relu(self.bn2(self.depthwise(F.relu6(self.bn1(self.expand(x))))))
        z = self.project(y)
        return self.head(z + self.side(z))


def _chain() -> Chain:
    torch.manual_seed(0)
    model = Chain()
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _data():
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 12, 12, generator=generator) for _ in range(2)]


def test_keeping_every_channel_is_the_identity():
    model, data = _chain(), _data()
    result = prune_channels(model, "project", 16, data)
    with torch.no_grad():
        torch.testing.assert_close(result.model(data[0]), model(data[0]), rtol=0, atol=0)


def test_the_kept_channels_compute_what_they_did_and_the_layers_shrink():
    model, data = _chain(), _data()
    result = prune_channels(model, "project", 6, data)
    assert result.winnowed == ["expand", "bn2", "depthwise", "bn1"]
    pruned = result.model
    assert type(pruned.expand) is PadRight and pruned.expand.out_channels == 6  # its own padding kept
    assert pruned.depthwise.groups == pruned.depthwise.in_channels == 6 and pruned.bn1.num_features == 6
    assert pruned.project.in_channels == 6 and pruned.project.weight.shape == (8, 6, 1, 1)
    inside = {}
    for name, net in (("before", model), ("after", pruned)):
        hook = net.project.register_forward_pre_hook(lambda m, a, name=name: inside.__setitem__(name, a[0]))
        with torch.no_grad():
            net(data[0])
        hook.remove()
    assert torch.equal(inside["after"], inside["before"][:, result.kept])
    # MACs: expand 16→6 outputs at 12×12 (2×2×3 windows), depthwise 16→6 (3×3), project 16→6 inputs
    before, after = model_costs(model, data[0][:1]), model_costs(pruned, data[0][:1])
    assert before.macs - after.macs == 144 * 10 * 12 + 144 * 10 * 9 + 144 * 8 * 10


def test_least_squares_refit_beats_plain_removal_on_correlated_channels():
    generator = torch.Generator().manual_seed(2)
    model = nn.Sequential(nn.Conv2d(4, 12, 1, bias=False), nn.ReLU(), nn.Conv2d(12, 5, 3, padding=1)).eval()
    with torch.no_grad():  # twelve channels made of four: removing some loses little once the others make up for it
        base = torch.randn(4, 4, 1, 1, generator=generator)
        mixing = torch.randn(12, 4, generator=generator)
        model[0].weight.copy_((mixing @ base.reshape(4, 4)).reshape(12, 4, 1, 1).abs())
    data = [torch.randn(8, 4, 10, 10, generator=generator).abs() for _ in range(2)]
    errors = {}
    for reconstruct in (True, False):
        result = prune_channels(model, "2", 6, data, reconstruct=reconstruct)
        with torch.no_grad():
            errors[reconstruct] = float(sum((result.model(x) - model(x)).pow(2).mean() for x in data))
    assert errors[True] < 0.1 * errors[False], errors


def test_chains_that_cannot_be_pruned_say_why():
    model, data = _chain(), _data()
    reasons = prunable_layers(model, data[0])
    assert reasons["expand"] == "its input is the model's input"
    assert reasons["side"].startswith("its input channels also feed 1 other op(s)")
    assert reasons["head"].endswith("lies between it and the layer that makes its input")
    with pytest.raises(SpecError, match="cannot prune the input channels of 'head'"):
        prune_channels(model, "head", 4, data)
    with pytest.raises(SpecError, match="keep between 1 and 16, got 17"):
        prune_channels(model, "project", 17, data)
    with pytest.raises(SpecError, match="'bn1' is not a convolution"):
        prune_channels(model, "bn1", 4, data)


class PaddedPooled(nn.Module):
    """TF-style 'same' padding before a depthwise convolution (functional and module), then global pooling and
    flatten before a Linear; a spatial mean before another; and a flatten of 2×2 maps, which mixes channels."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Conv2d(3, 16, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, stride=2, groups=16)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.project = nn.Conv2d(16, 12, 1)
        self.fc = nn.Linear(12, 5)
        self.side = nn.Conv2d(3, 12, 1)
        self.mean_fc = nn.Linear(12, 5)
        self.wide = nn.Conv2d(3, 3, 1)
        self.mixed_fc = nn.Linear(12, 5)

    def forward(self, x):
        y = self.project(self.depthwise(self.pad(F.pad(F.relu(self.expand(x)), (1, 0, 1, 0)))))
        pooled = torch.flatten(F.adaptive_avg_pool2d(F.relu(y), 1), 1)
        mixed = F.max_pool2d(self.wide(x), 6).flatten(1)
        return self.fc(pooled) + self.mean_fc(self.side(x).mean((2, 3))) + self.mixed_fc(mixed)


def test_chains_pass_spatial_padding_pooling_and_flatten_of_one_pixel():
    torch.manual_seed(3)
    model, data = PaddedPooled().eval(), _data()
    reasons = prunable_layers(model, data[0])
    assert reasons["project"] == ChannelChain("project", "expand", ["depthwise"])
    assert reasons["fc"] == ChannelChain("fc", "project", [])
    assert reasons["mean_fc"] == ChannelChain("mean_fc", "side", [])
    assert reasons["mixed_fc"].endswith("lies between it and the layer that makes its input")  # 3 channels × 4 pixels
    for layer, keep in (("project", 9), ("fc", 7), ("mean_fc", 4)):
        result = prune_channels(model, layer, keep, data, reconstruct=False)
        inside = {}
        for name, net in (("before", model), ("after", result.model)):
            hook = net.get_submodule(layer).register_forward_pre_hook(
                lambda m, a, name=name: inside.__setitem__(name, a[0]))
            with torch.no_grad():
                net(data[0])
            hook.remove()
        assert torch.equal(inside["after"], inside["before"][:, result.kept])


@pytest.mark.slow
def test_pretrained_mobilenet_prunes_through_its_depthwise_chains(mobilenet, calibration_batches):
    data = [calibration_batches[0][:4]]
    reasons = prunable_layers(mobilenet, data[0])
    projections = ["features.1.conv.1"] + [f"features.{block}.conv.2" for block in range(2, 18)]
    assert all(isinstance(reasons[name], ChannelChain) for name in projections)  # every depthwise chain prunes
    result = prune_channels(mobilenet, "features.4.conv.2", 72, data)  # 144 → 72 expanded channels
    assert result.model.features[4].conv[1][0].groups == 72
    with torch.no_grad():
        agreement = float((result.model(data[0]).argmax(1) == mobilenet(data[0]).argmax(1)).float().mean())
    assert agreement >= 0.75


def test_refitting_to_the_uncompressed_output_makes_up_for_the_layers_before():
    """Pruning a layer whose input already comes from a pruned layer: refit to the original model's output of that
    layer (``reference``), its output is the least-squares optimum against the original's (every position is
    sampled here), so closer than refit to what the layer computed on its pruned inputs, and no perturbation helps."""
    generator = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 6, 3, padding=1)).eval()
    data = [torch.randn(8, 3, 10, 10, generator=generator) for _ in range(2)]
    first = prune_channels(model, "2", 6, data).model  # layer 2 loses 10 inputs: its output changes
    def error(net) -> float:
        with torch.no_grad():
            return float(sum((net(x) - model(x)).pow(2).mean() for x in data))

    own, refit = (prune_channels(first, "4", 8, data, reference=r).model for r in (None, model))
    assert error(refit) < 0.95 * error(own), (error(refit), error(own))
    for _ in range(3):
        nudged = copy.deepcopy(refit)
        with torch.no_grad():
            nudged[4].weight.add_(1e-3 * torch.randn(nudged[4].weight.shape, generator=generator))
        assert error(nudged) > error(refit)
