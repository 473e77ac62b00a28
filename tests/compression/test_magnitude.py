"""Magnitude pruning zeroes exactly the smallest weights (over the model, per layer, or 2 of every 4 input
channels), leaves the given model alone, and the zeros stay zeros through quantization into the QDQ file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import lowbit
from lowbit.compression import magnitude_prune
from lowbit.errors import SpecError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 36, 10)).eval()


def test_global_pruning_zeroes_exactly_the_smallest_weights_of_the_whole_model():
    model = _model()
    original = [p.detach().clone() for p in model.parameters()]
    result = magnitude_prune(model, 0.6)
    layers = [m for m in result.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    layers_before = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    before = torch.cat([m.weight.detach().abs().flatten() for m in layers_before])
    after = torch.cat([m.weight.flatten() for m in layers])
    zero = after == 0
    assert int(zero.sum()) == int(0.6 * after.numel()) and result.sparsity() == pytest.approx(0.6, abs=1e-3)
    assert float(before[zero].max()) <= float(before[~zero].min())  # every pruned weight below every kept one
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), original))  # the given model untouched


def test_layer_scope_prunes_each_layer_alike_and_apply_restores_zeros_after_a_step():
    result = magnitude_prune(_model(), 0.5, scope="layer", exclude=("5",))
    assert set(result.masks) == {"0", "2"}
    for name, mask in result.masks.items():
        weight = result.model.get_submodule(name).weight
        assert int((weight == 0).sum()) == int(0.5 * weight.numel()) and torch.equal(weight != 0, mask)
    assert int((result.model[5].weight == 0).sum()) == 0
    optimizer = torch.optim.SGD(result.model.parameters(), lr=0.1)
    result.model(torch.randn(2, 4, 6, 6)).sum().backward()
    optimizer.step()
    assert int((result.model[0].weight == 0).sum()) == 0  # the step moved the pruned weights
    result.apply()
    assert torch.equal(result.model[0].weight != 0, result.masks["0"])


def test_two_of_four_keeps_the_two_largest_of_every_four_input_channels():
    result = magnitude_prune(_model(), pattern="2:4", exclude=("5",))
    original = _model()
    for name in ("0", "2"):
        weight = original.get_submodule(name).weight.detach().movedim(1, -1).reshape(-1, 4)
        kept = result.model.get_submodule(name).weight.detach().movedim(1, -1).reshape(-1, 4) != 0
        assert torch.equal(kept.sum(1), torch.full((weight.shape[0],), 2))
        expected = weight.abs().argsort(dim=1, descending=True)[:, :2]
        assert torch.equal(kept.gather(1, expected), torch.ones_like(expected, dtype=torch.bool))


def test_zeros_survive_quantization_into_the_qdq_file(tmp_path):
    result = magnitude_prune(_model(), 0.7)
    data = [torch.randn(4, 4, 6, 6) for _ in range(2)]
    sim = lowbit.quantize(result.model, data)
    for key, quantizer in sim.quantizers().items():
        if sim.point(key).role == "weight":
            weight = sim.weight(key).detach()
            assert bool((quantizer(weight)[weight == 0] == 0).all()), key
    paths = sim.export(tmp_path, verify=data)
    integers = [numpy_helper.to_array(t) for t in onnx.load(str(paths.qdq_onnx)).graph.initializer
                if t.data_type == onnx.TensorProto.INT8 and t.dims and np.prod(t.dims) > 16]
    pruned = sum(int((~mask).sum()) for mask in result.masks.values())
    assert sum(int((i == 0).sum()) for i in integers) >= pruned
    assert paths.fidelity.max_error_lsb <= 1.0


def test_bad_pruning_requests_are_one_line():
    with pytest.raises(SpecError, match="exclude names no layer of the model: head"):
        magnitude_prune(_model(), 0.5, exclude=("head",))
    with pytest.raises(SpecError, match="sparsity is a fraction"):
        magnitude_prune(_model(), 1.0)
    with pytest.raises(SpecError, match="pattern is N:M"):
        magnitude_prune(_model(), pattern="half")
    with pytest.raises(SpecError, match="multiples of 4"):
        magnitude_prune(nn.Conv2d(3, 4, 3), pattern="2:4")
