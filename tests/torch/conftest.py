"""Fixtures of the torch front-end tests (the shared MobileNetV2 ones are in tests/conftest.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from lowbit.zoo import tiny_resnet


@pytest.fixture(scope="session")
def folded_mobilenet(mobilenet, calibration_batches):
    """A BN-folded copy of MobileNetV2 and the list of folded (conv, bn) pairs."""
    model = copy.deepcopy(mobilenet).eval()
    pairs = lowbit.fold_batchnorm(model, calibration_batches[0][:1])
    return model, pairs


@pytest.fixture(scope="session")
def fresh_mobilenet_sim(folded_mobilenet, calibration_batches):
    """An uncalibrated cpu-int8 sim of the BN-folded MobileNetV2 (what quantize builds before calibrating)."""
    model, _ = folded_mobilenet
    return lowbit.QuantSim(model, calibration_batches[0][:1], target="cpu-int8")


def _trained_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def resnet():
    """tiny_resnet with deterministic weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    return _trained_bn(tiny_resnet(), seed=0)


@pytest.fixture(scope="session")
def resnet_batches():
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(3)]


@pytest.fixture(scope="session")
def resnet_sim(resnet, resnet_batches):
    """tiny_resnet quantized with the default target."""
    return lowbit.quantize(resnet, resnet_batches, target="default")


@pytest.fixture(scope="session")
def resnet_export(resnet_sim, tmp_path_factory):
    return resnet_sim.export(tmp_path_factory.mktemp("resnet_export"), name="tiny_resnet")
