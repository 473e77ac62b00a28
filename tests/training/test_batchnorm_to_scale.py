"""A sim that kept its BatchNorms folds them after training into weights, biases and per-channel weight scales:
the weight integers stay the trained ones (computed here by hand from the encodings), the folded sim computes
what the unfolded one did, and qat ends folded, so onnxruntime runs the model whose score qat reported."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import SpecError
from lowbit.fidelity import output_arrays
from lowbit.runtime import run, session
from lowbit.torch.weight_quantized import WeightQuantized


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                          nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.Flatten(), nn.Linear(6 * 64, 5))
    for module in model:
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.3, 3)
            module.weight.data.uniform_(0.3, 2).mul_(torch.where(torch.rand(module.num_features) < 0.25, -1.0, 1.0))
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _data(count: int = 4):
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 8, 8, generator=generator) for _ in range(count)]


def _integers(quantizer, weight: torch.Tensor) -> torch.Tensor:
    """The centred grid integers of ``weight`` under ``quantizer``'s per-channel encoding, by the definition."""
    scale = quantizer.scale.reshape([-1] + [1] * (weight.dim() - 1)).double()
    zero_point = (-quantizer.offset).reshape(scale.shape).double()
    levels = quantizer.spec.levels
    return (torch.round(weight.double() / scale) + zero_point).clamp(0, levels - 1) - zero_point


def test_folding_keeps_the_trained_integers_and_what_the_sim_computes():
    data = _data()
    sim = lowbit.quantize(_model(), data, fold_batchnorm=False)
    wrappers = {name: m for name, m in sim.model.named_modules() if isinstance(m, WeightQuantized)
                and isinstance(m.layer, nn.Conv2d)}
    batchnorms = {name: m for name, m in sim.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    with torch.no_grad():  # as training leaves them: moved weights (one at the grid's negative end), new statistics
        for name, wrapper in wrappers.items():
            wrapper.layer.weight.mul_(1 - 0.05 * torch.rand_like(wrapper.layer.weight))
            negative = int(batchnorms[str(int(name) + 1)].weight.argmin())
            wrapper.layer.weight[negative].view(-1)[0] = -128 * wrapper.weight_quantizer.scale[negative]
        for batchnorm in batchnorms.values():
            batchnorm.running_var.mul_(1.5)
    trained = {name: _integers(m.weight_quantizer, m.layer.weight.detach()) for name, m in wrappers.items()}
    signs = {name: torch.sign(batchnorms[str(int(name) + 1)].weight.detach()) for name in wrappers}
    with torch.no_grad():
        before = [sim(x) for x in data]
    assert sim.fold_batchnorm() == [("0", "1"), ("3", "4"), ("6", "7")]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in sim.model.modules())
    for name, wrapper in wrappers.items():
        folded = _integers(wrapper.weight_quantizer, wrapper.layer.weight.detach())
        expected = trained[name] * signs[name].reshape(-1, 1, 1, 1)
        assert int((expected == 128).sum()) >= 1, name  # the mirrored -128 of a negative γ clamps to 127 ...
        assert torch.equal(folded, expected.clamp(max=127)), name  # ... every other integer is kept
        assert wrapper.output_quantizer is not None  # joined to the quantizer after it, as in a folded sim
    with torch.no_grad():
        after = [sim(x) for x in data]
    moved = torch.cat([(a - b).abs().flatten() for a, b in zip(after, before)]) / _output_lsb(sim)
    assert float(moved.max()) <= 2.0001 and float((moved > 0.5).float().mean()) <= 0.15  # rounding ties, the clamped weight


def test_folding_leaves_the_weight_quantized_output_unchanged():
    """With activations in float, the folded sim computes the unfolded one's output to 1e-5 (negative γ included)."""
    data = _data(2)
    sim = lowbit.quantize(_model(), data, fold_batchnorm=False)
    with torch.no_grad():
        for module in sim.model.modules():
            if isinstance(module, WeightQuantized):
                module.layer.weight.mul_(1 - 0.05 * torch.rand_like(module.layer.weight))
    for key, quantizer in sim.quantizers().items():
        if sim.point(key).role != "weight":
            quantizer.mode = "off"
    with torch.no_grad():
        before = torch.cat([sim(x) for x in data])
        assert len(sim.fold_batchnorm()) == 3
        after = torch.cat([sim(x) for x in data])
    assert float((after - before).abs().max()) <= 1e-5 * float(before.abs().max())


def test_qat_ends_folded_and_onnxruntime_runs_what_it_scored(tmp_path):
    data = _data(6)
    sim = lowbit.quantize(_model(), data, fold_batchnorm=False)
    result = lowbit.qat(sim, data, steps=8, lr=1e-3, eval_data=data[:2])
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in sim.model.modules())
    paths = sim.export(tmp_path, name="trained")
    assert "BatchNormalization" not in {node.op_type for node in onnx.load(str(paths.qdq_onnx)).graph.node}
    runtime = session(paths.qdq_onnx)
    model = _model()
    with torch.no_grad():
        teacher = torch.cat([model(x) for x in data[:2]])
        simulated = torch.cat([sim(x) for x in data[:2]])
    executed = np.concatenate([run(runtime, x)[0] for x in data[:2]])
    agreement = float((torch.from_numpy(executed).argmax(1) == teacher.argmax(1)).float().mean())
    assert result.scores()[-1][1] == pytest.approx(agreement)
    np.testing.assert_allclose(executed, output_arrays(simulated)[0], rtol=0, atol=1.0001 * _output_lsb(sim))


def _output_lsb(sim) -> float:
    """The scale of the quantizer on the model's output."""
    (key,) = [k for k, q in sim.quantizers().items() if sim.point(k).role == "output" and k.endswith("_9")]
    return float(sim.quantizers()[key].scale)


def test_a_per_tensor_weight_scale_cannot_take_the_fold_so_qat_stops_before_training():
    data = _data(2)
    sim = lowbit.quantize(_model(), data, per_channel=False, fold_batchnorm=False)
    weights = [p.detach().clone() for p in sim.model.parameters()]
    with pytest.raises(SpecError, match="per output channel"):
        lowbit.qat(sim, data, steps=2)
    assert all(torch.equal(p, w) for p, w in zip(sim.model.parameters(), weights))


@pytest.mark.slow
def test_pretrained_mobilenet_trains_with_batchnorm_and_exports_folded(mobilenet, calibration_batches, eval_batches,
                                                                       tmp_path):
    data = [batch[:4] for batch in calibration_batches[:2]]
    held_out = [eval_batches[0][:8]]
    sim = lowbit.quantize(mobilenet, data, fold_batchnorm=False)
    kept = sum(isinstance(m, nn.BatchNorm2d) for m in sim.model.modules())
    result = lowbit.qat(sim, data, steps=2, eval_data=held_out)
    assert kept == 52 and not any(isinstance(m, nn.BatchNorm2d) for m in sim.model.modules())
    paths = sim.export(tmp_path, name="mobilenet", verify=held_out)
    assert paths.fidelity.top1_agreement == 1.0 and paths.fidelity.max_error_lsb <= 1.0, paths.fidelity.row()
    executed = np.concatenate([run(session(paths.qdq_onnx), x)[0] for x in held_out])
    with torch.no_grad():
        teacher = torch.cat([mobilenet(x) for x in held_out])
    agreement = float((torch.from_numpy(executed).argmax(1) == teacher.argmax(1)).float().mean())
    assert result.scores()[-1][1] == pytest.approx(agreement)
