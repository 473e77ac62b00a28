"""BatchNorm folding keeps FP32 outputs (BN after a layer, and before it where exact), and lowbit
never modifies the user's model."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.errors import InputError
from lowbit.torch.batchnorm_fold import fold_into, fold_preceding_into


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.slow
def test_fold_mobilenet_keeps_outputs(mobilenet, folded_mobilenet, eval_batches):
    folded, pairs = folded_mobilenet
    assert len(pairs) == 52
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(isinstance(folded.get_submodule(bn), nn.Identity) for _, bn in pairs)
    with torch.no_grad():
        expected, got = mobilenet(eval_batches[0]), folded(eval_batches[0])
    assert _relative_error(got, expected) <= 1e-5
    assert torch.equal(expected.argmax(1), got.argmax(1))


def test_fold_tiny_resnet_keeps_outputs(resnet, resnet_batches):
    model = copy.deepcopy(resnet)
    pairs = lowbit.fold_batchnorm(model, resnet_batches[0])
    assert len(pairs) == 1 + 4 * 2 + 3  # stem, two per block, three downsamples
    assert ("layer2.0.downsample.0", "layer2.0.downsample.1") in pairs
    with torch.no_grad():
        for batch in resnet_batches:
            assert _relative_error(model(batch), resnet(batch)) <= 1e-5


def test_fold_skips_batchnorm_whose_conv_output_is_shared():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = Shared().eval()
    model.bn.running_mean.fill_(0.3)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    assert lowbit.fold_batchnorm(model, x) == []
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def _trained(model: nn.Module, seed: int) -> nn.Module:
    """Every BatchNorm gets running statistics and affine parameters far from the identity, some
    scales negative."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen))
                module.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.2)
                module.weight.copy_((torch.rand(n, generator=gen) + 0.5) * torch.randn(n, generator=gen).sign())
                module.bias.copy_(torch.randn(n, generator=gen))
    return model.eval()


def _folds_exactly(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    with torch.no_grad():
        expected = model(x)
    pairs = lowbit.fold_batchnorm(model, x[:1])
    with torch.no_grad():
        assert _relative_error(model(x), expected) <= 1e-5
    return pairs


def test_fold_batchnorm_before_linear_and_unpadded_convs():
    model = _trained(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=4), nn.BatchNorm2d(8), nn.ReLU(),  # both sides of one conv
        nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1, bias=False), nn.ReLU(),
        nn.BatchNorm2d(6), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),  # padded: this BN stays
        nn.Flatten(), nn.BatchNorm1d(6 * 8 * 8), nn.Linear(6 * 8 * 8, 5), nn.BatchNorm1d(5)), seed=1)
    x = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    kept = model[9]
    model.train()  # folding reads the running statistics and leaves modes and statistics alone
    with torch.no_grad():
        expected = model.eval()(x)
    running_mean = kept.running_mean.clone()
    pairs = lowbit.fold_batchnorm(model.train(), x[:1])
    assert pairs == [("3", "2"), ("7", "6"), ("14", "13"), ("3", "4"), ("14", "15")]
    assert model.training and kept.training and torch.equal(kept.running_mean, running_mean)
    assert isinstance(model[9], nn.BatchNorm2d)
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) == 1
    with torch.no_grad():
        assert _relative_error(model.eval()(x), expected) <= 1e-5


class SameConv2d(nn.Conv2d):
    """TensorFlow-style "same" padding computed in forward from the input size, as TF-ported
    EfficientNets do: zero padding added by F.pad, possibly more on the bottom/right."""

    def forward(self, x):
        pads = []
        for size, kernel, stride in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class StandardizedConv2d(nn.Conv2d):
    """Weight standardization in forward: scaling the weight's rows does not scale the output."""

    def forward(self, x):
        weight = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return self._conv_forward(x, weight / weight.std(dim=(1, 2, 3), keepdim=True), self.bias)


def test_fold_batchnorm_after_a_conv_with_its_own_forward_where_exact():
    model = _trained(nn.Sequential(
        SameConv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.BatchNorm2d(8), SameConv2d(8, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),  # the BN before it stays
        StandardizedConv2d(4, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)), seed=3)  # this BN goes forward
    x = torch.randn(4, 3, 15, 15, generator=torch.Generator().manual_seed(4))
    assert _folds_exactly(model, x) == [("9", "8"), ("0", "1"), ("4", "5")]
    assert isinstance(model[3], nn.BatchNorm2d)


@pytest.mark.parametrize("model,shape", [
    (nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), nn.ConvTranspose2d(4, 3, 2, stride=2)), (2, 4, 5, 5)),
    (nn.Sequential(nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 3)), (2, 6, 6)),  # Linear acts on the last dim
    (nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(4)), (2, 4, 5)),  # BN normalizes dim 1, not the features
    (nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")), (2, 4, 6, 6)),
], ids=["before-conv-transpose", "before-linear-3d", "after-linear-3d", "before-padded-conv"])
def test_fold_leaves_inexact_pairs_alone(model, shape):
    model = _trained(copy.deepcopy(model), seed=5)
    assert _folds_exactly(model, torch.randn(*shape, generator=torch.Generator().manual_seed(6))) == []


def test_fold_records_output_statistics_that_a_preceding_fold_keeps():
    after, before = _trained(nn.BatchNorm2d(6), seed=7), _trained(nn.BatchNorm2d(4), seed=8)
    conv = nn.Conv2d(4, 6, 1)
    fold_into(conv, after)
    fold_preceding_into(conv, before)
    mean, std = conv.folded_batchnorm.moments(conv)
    torch.testing.assert_close(mean, after.bias.detach().double())
    torch.testing.assert_close(std, after.weight.detach().abs().double())


def test_fold_names_an_example_that_does_not_fit():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with pytest.raises(InputError, match="does not fit"):
        lowbit.fold_batchnorm(model, torch.randn(1, 5, 8, 8))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(before, model):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_quantize_does_not_modify_user_model(resnet, resnet_batches):
    model = copy.deepcopy(resnet)
    before = _state(model)
    modules = [type(m) for m in model.modules()]
    sim = lowbit.quantize(model, resnet_batches)
    with torch.no_grad():
        sim(resnet_batches[0])
    _assert_same_state(before, model)
    assert [type(m) for m in model.modules()] == modules
    assert not model.training


def test_quantsim_does_not_modify_user_model(resnet, resnet_batches, tmp_path):
    model = copy.deepcopy(resnet).train()
    before = _state(model)
    sim = lowbit.QuantSim(model, resnet_batches[0]).calibrate(resnet_batches)
    sim.export(tmp_path)
    _assert_same_state(before, model)
    assert model.training  # its mode is left alone too
    assert isinstance(model.conv1, nn.Conv2d) and isinstance(model.bn1, nn.BatchNorm2d)


def test_quantize_mobilenet_did_not_modify_user_model(mobilenet, mobilenet_sim):
    # mobilenet_sim was built by lowbit.quantize from the session's pretrained model
    fresh = lowbit.zoo.pretrained_mobilenet_v2()
    _assert_same_state(fresh.state_dict(), mobilenet)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in mobilenet.modules()) == 52
