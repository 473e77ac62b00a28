"""Both front ends make the same decisions on the same network: a model given to the PyTorch front end
and its ONNX export given to the ONNX front end get the same quantizers (by role, op type and spec)
and the same cross-layer-equalization chains, since both read the rules in ``lowbit.graph``."""

from __future__ import annotations

import copy
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.onnx.quantsim import OnnxQuantSim
from lowbit.torch.quantsim import QuantSim

sys.path.insert(0, str(Path(__file__).parents[1] / "fidelity"))
from fidelity_zoo_models import build  # noqa: E402

SAME_GRAPH_MODELS = ("audio_conv1d", "concat_split_residual", "decoder", "grouped_dilated", "two_inputs")
"""Zoo models whose ONNX export has the fx graph's ops one for one (no op split in two, such as SiLU)."""


def _example(inputs):
    return tuple(part[:2] for part in inputs) if isinstance(inputs, tuple) else inputs[:2]


def _export(model, example, path: Path, keep_batchnorm: bool = False) -> Path:
    """The ONNX file of ``model``; ``keep_batchnorm`` keeps its BatchNormalization nodes unfolded."""
    options = {"do_constant_folding": False, "training": torch.onnx.TrainingMode.PRESERVE} if keep_batchnorm else {}
    torch.onnx.export(model, example if isinstance(example, tuple) else (example,), str(path), dynamo=False,
                      **options)
    return path


def _folded(model, example):
    """A copy with BatchNorm folded, as the ONNX exporter folds it."""
    model = copy.deepcopy(model)
    lowbit.fold_batchnorm(model, example)
    return model


def _decisions(sim) -> Counter:
    return Counter((p.role, p.op_type, p.spec) for p in sim.points)


def _chains(groups) -> list[tuple[int, int, int]]:
    return sorted((len(g.layers), len(g.relu6_replaced), len(g.high_bias_absorbed)) for g in groups)


@pytest.fixture(scope="module")
def networks(mobilenet, tmp_path_factory):
    """(name, torch model, example input, its ONNX export) for MobileNetV2 and the zoo's same-graph models."""
    folder = tmp_path_factory.mktemp("parity")
    example = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    found = [("mobilenet_v2", mobilenet, example)]
    for name in SAME_GRAPH_MODELS:
        model, inputs = build(name)
        found.append((name, model, _example(inputs)))
    return [(name, model, example, _export(_folded(model, example), example, folder / f"{name}.onnx"))
            for name, model, example in found]


@pytest.mark.parametrize("target", ["default", "cpu-int8", "w4a8"])
def test_both_front_ends_place_the_same_quantizers(networks, target):
    for name, model, example, path in networks:
        torch_sim = QuantSim(_folded(model, example), example, target=target)
        onnx_sim = OnnxQuantSim(path, target=target)
        assert _decisions(torch_sim) == _decisions(onnx_sim), name
        assert torch_sim.quantizer_counts() == onnx_sim.quantizer_counts(), name


def test_both_front_ends_equalize_the_same_chains(networks):
    compared = 0
    for name, model, example, path in networks:
        _, torch_groups = lowbit.equalize(model, example)
        _, onnx_groups = lowbit.equalize(_export(model, example, path.with_suffix(".bn.onnx"), keep_batchnorm=True))
        assert _chains(torch_groups) == _chains(onnx_groups), name
        compared += len(torch_groups)
    assert compared >= 16 + 2  # MobileNetV2's 16 chains, and the audio and decoder models' own


def _small_cnn() -> torch.nn.Module:
    """Conv-BN-ReLU, depthwise-BN-ReLU6, pointwise, pooling, Linear, with trained-looking BN statistics."""
    nn = torch.nn
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.6)
    return model.eval()


def test_both_front_ends_run_the_same_technique_sequence_and_rules(tmp_path):
    model = _small_cnn()
    images = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    data = [images[:8], images[8:]]
    path = _export(model, images[:8], tmp_path / "small.onnx", keep_batchnorm=True)
    sims = {}
    for name, given, batches in (("torch", model, data), ("onnx", path, [b.numpy() for b in data])):
        sim = lowbit.quantize(given, batches, techniques=("equalize", "sequential_mse", "bias_correction"))
        sims[name] = (sim, batches)
    lines = {name: sim.technique_results for name, (sim, _) in sims.items()}
    assert [line.split(":")[0] for line in lines["torch"]] == [line.split(":")[0] for line in lines["onnx"]]
    assert lines["torch"][0] == lines["onnx"][0] == "equalize: 1 layer groups (BatchNorm folded)"
    for sim, batches in sims.values():
        assert {q.frozen_by for k, q in sim.quantizers().items() if sim.point(k).role == "weight"} == {"sequential_mse"}
        assert len(lowbit.correct_bias(sim, batches).corrected) == 4
        lowbit.adaround(sim, batches, num_iterations=10)
        assert {q.frozen_by for k, q in sim.quantizers().items() if sim.point(k).role == "weight"} == {"adaround"}
        after = lowbit.correct_bias(sim, batches)
        assert after.corrected == () and len(after.skipped) == 4  # AdaRound fitted their output means
