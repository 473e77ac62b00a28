"""BatchNorm folding keeps FP32 outputs, and lowbit never modifies the user's model."""

from __future__ import annotations

import copy

import torch
from torch import nn

import lowbit


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


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
