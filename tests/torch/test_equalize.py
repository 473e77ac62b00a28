"""Cross-layer equalization: the paper's closed form, exact FP32 scaling, better W8 depthwise SQNR."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lowbit
from lowbit.algorithms.cross_layer_equalization import equalization_scales
from lowbit.zoo import labelled_photos, photos_to_batch


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _unequal_pair(seed: int = 0) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1))
    with torch.no_grad():
        spread = torch.logspace(-2, 2, 8)  # per-channel ranges spanning four decades
        model[0].weight.copy_(torch.randn(8, 3, 3, 3, generator=gen) * spread.reshape(-1, 1, 1, 1))
        model[0].bias.copy_(torch.randn(8, generator=gen) * spread)
        columns = spread.flip(0).reshape(1, -1, 1, 1) ** 0.5
        model[2].weight.copy_(torch.randn(5, 8, 3, 3, generator=gen) * columns)
    return model.eval()


def test_pair_follows_the_closed_form():
    model = _unequal_pair()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    r1 = model[0].weight.detach().abs().amax(dim=(1, 2, 3))
    r2 = model[2].weight.detach().abs().amax(dim=(0, 2, 3))
    original = model
    model, groups = lowbit.equalize(original, x[:1])
    torch.testing.assert_close(original[0].weight.detach().abs().amax(dim=(1, 2, 3)), r1, rtol=0, atol=0)  # untouched
    assert [g.layers for g in groups] == [("0", "2")]
    assert groups[0].relu6_replaced == () and groups[0].high_bias_absorbed == ()  # no BN: nothing to absorb
    new_r1 = model[0].weight.detach().abs().amax(dim=(1, 2, 3))
    new_r2 = model[2].weight.detach().abs().amax(dim=(0, 2, 3))
    target = torch.sqrt(r1 * r2)
    torch.testing.assert_close(new_r1, new_r2, rtol=1e-5, atol=0)
    torch.testing.assert_close(new_r1, target, rtol=1e-5, atol=0)
    with torch.no_grad():
        assert _relative_error(model(x), expected) <= 1e-5


def test_dead_channels_keep_scale_one():
    scales = equalization_scales(torch.tensor([0.0, 4.0, 1.0]), torch.tensor([2.0, 0.0, 4.0]))
    torch.testing.assert_close(scales, torch.tensor([1.0, 1.0, 0.5]))


def test_depthwise_triplet_converges_and_replaces_relu6():
    gen = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(4, 6, 1), nn.ReLU6(), nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU(),
                          nn.Conv2d(6, 2, 1)).eval()
    with torch.no_grad():
        for conv in (model[0], model[2], model[4]):
            conv.weight.mul_(torch.logspace(-1, 1, conv.weight.shape[0])[torch.randperm(conv.weight.shape[0],
                                                                                          generator=gen)]
                             .reshape(-1, *[1] * (conv.weight.dim() - 1)))
    x = torch.randn(2, 4, 8, 8, generator=gen)
    reference = copy.deepcopy(model)
    reference[1] = nn.ReLU()
    model, groups = lowbit.equalize(model, x[:1])
    assert [(g.layers, g.relu6_replaced) for g in groups] == [(("0", "2", "4"), ("1",))]
    assert isinstance(model[1], nn.ReLU) and not isinstance(model[1], nn.ReLU6)
    r1 = model[0].weight.abs().amax(dim=(1, 2, 3))
    r2 = model[2].weight.abs().amax(dim=(1, 2, 3))
    r3 = model[4].weight.abs().amax(dim=(0, 2, 3))
    torch.testing.assert_close(r1, r2, rtol=1e-4, atol=0)
    torch.testing.assert_close(r2, r3, rtol=1e-4, atol=0)
    with torch.no_grad():
        assert _relative_error(model(x), reference(x)) <= 1e-5


def test_high_bias_absorption_moves_bias_through_relu_exactly_when_activations_stay_above():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        model[1].bias.copy_(torch.tensor([10.0, 0.0, 5.0, -1.0]))  # beta
        model[1].weight.copy_(torch.tensor([1.0, 1.0, 0.5, 1.0]))  # gamma
        model[0].weight.mul_(0.01)  # pre-activation stays near beta: above beta - 3 gamma
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    model, groups = lowbit.equalize(model, x[:1])
    assert groups[0].high_bias_absorbed == ("0",)
    with torch.no_grad():
        assert _relative_error(model(x), expected) <= 1e-5


def _w8_sqnr(weight: torch.Tensor) -> float:
    """Per-tensor symmetric 8-bit quantize-dequantize SQNR in dB."""
    scale = weight.abs().max() / 127
    quantized = torch.clamp(torch.round(weight / scale), -127, 127) * scale
    return float(10 * torch.log10(weight.pow(2).sum() / (weight - quantized).pow(2).sum()))


def _mean_depthwise_sqnr(model: nn.Module) -> float:
    values = [_w8_sqnr(m.weight.detach()) for m in model.modules()
              if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels]
    assert len(values) == 17
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def labelled():
    photos = labelled_photos()
    return photos_to_batch([img for img, _, _ in photos]), torch.tensor([label for _, label, _ in photos])


@pytest.mark.slow
def test_mobilenet_scaling_is_exact_and_improves_depthwise_sqnr(mobilenet, labelled):
    images, _ = labelled
    model, groups = lowbit.equalize(mobilenet, images[:1], absorb_high_bias=False)
    reference = copy.deepcopy(mobilenet)
    lowbit.fold_batchnorm(reference, images[:1])
    replaced = [name for g in groups for name in g.relu6_replaced]
    for name in replaced:
        reference.set_submodule(name, nn.ReLU())
    assert len(groups) == 16 and len(replaced) == 34  # 17 blocks x 2 ReLU6 inside chains
    assert all(len(g.layers) >= 3 for g in groups)
    assert isinstance(model.features[18][2], nn.ReLU6)  # before the pool: not between equalized layers
    with torch.no_grad():
        assert _relative_error(model(images), reference(images)) <= 1e-4
    before, after = _mean_depthwise_sqnr(reference), _mean_depthwise_sqnr(model)
    print(f"mean depthwise W8 SQNR: folded {before:.1f} dB, equalized {after:.1f} dB")
    assert after > before + 3


@pytest.mark.slow
def test_mobilenet_top1_survives_relu6_replacement_and_bias_absorption(mobilenet, labelled):
    images, labels = labelled
    model, groups = lowbit.equalize(mobilenet, images[:1])
    assert any(g.high_bias_absorbed for g in groups)
    with torch.no_grad():
        fp32 = float((mobilenet(images).argmax(1) == labels).float().mean())
        equalized = float((model(images).argmax(1) == labels).float().mean())
    print(f"top-1 on 20 photos: FP32 {fp32:.2f}, equalized {equalized:.2f}")
    assert equalized >= fp32 - 0.05


def test_folded_statistics_follow_the_scaling_of_mid_chain_layers(mobilenet, labelled):
    """A depthwise layer inside a Conv→depthwise→Conv triplet has its input and output rescaled; its
    recorded BN statistics must scale by the output factor measured on data."""
    images = labelled[0][:2]
    name = "features.2.conv.1.0"
    folded = copy.deepcopy(mobilenet)
    lowbit.fold_batchnorm(folded, images[:1])
    for module_name, module in list(folded.named_modules()):
        if isinstance(module, nn.ReLU6):  # as equalize does between equalized layers
            folded.set_submodule(module_name, nn.ReLU())
    equalized, _ = lowbit.equalize(mobilenet, images[:1], absorb_high_bias=False)
    outputs = {}
    for key, model in (("folded", folded), ("equalized", equalized)):
        layer = model.get_submodule(name)
        hook = layer.register_forward_hook(lambda m, a, out, key=key: outputs.setdefault(key, out))
        with torch.no_grad():
            model(images)
        hook.remove()
    a, b = (outputs[key].transpose(0, 1).flatten(1).double() for key in ("folded", "equalized"))
    factor = (a * b).sum(1) / (a * a).sum(1)  # least-squares per-channel scale: b = factor · a
    assert float((b - factor[:, None] * a).abs().max() / b.abs().max()) < 1e-4
    assert float((factor - 1).abs().max()) > 0.1  # the layer really was rescaled
    before = folded.get_submodule(name)
    after = equalized.get_submodule(name)
    mean_before, std_before = before.folded_batchnorm.moments(before)
    mean_after, std_after = after.folded_batchnorm.moments(after)
    torch.testing.assert_close(mean_after, mean_before * factor, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(std_after, std_before * factor, rtol=1e-4, atol=1e-6)
