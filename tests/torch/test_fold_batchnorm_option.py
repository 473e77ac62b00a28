"""``quantize(..., fold_batchnorm=False)`` keeps BatchNorm as its own op, on both front ends."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import SpecError


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    return model


def test_torch_sim_keeps_batchnorm_and_exports_what_it_computes(tmp_path):
    data = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    folded = lowbit.quantize(_model(), data)
    kept = lowbit.quantize(_model(), data, fold_batchnorm=False)
    assert folded.technique_results[0] == "fold batchnorm: 1 layers"
    assert kept.technique_results[0] == "fold batchnorm: off"
    assert any(isinstance(m, nn.BatchNorm2d) for m in kept.model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.model.modules())
    paths = kept.export(tmp_path, verify=data)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(paths.onnx)).graph.node}
    assert paths.fidelity.max_error_lsb <= 1.0001, paths.fidelity.row()


def test_onnx_sim_keeps_batchnorm(tmp_path):
    path = tmp_path / "bn.onnx"
    torch.onnx.export(_model(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    data = [np.random.default_rng(seed).standard_normal((4, 3, 16, 16)).astype(np.float32) for seed in range(2)]
    kept = lowbit.quantize(path, data, fold_batchnorm=False)
    assert kept.technique_results[0] == "fold batchnorm: off"
    assert "BatchNormalization" in {n.op_type for n in kept.model.graph.node}
    assert lowbit.quantize(path, data).technique_results[0] == "fold batchnorm: 1 layers"


def test_equalize_needs_batchnorm_folded():
    with pytest.raises(SpecError, match="fold_batchnorm=False"):
        lowbit.quantize(_model(), [torch.randn(2, 3, 16, 16)], techniques=["equalize"], fold_batchnorm=False)
