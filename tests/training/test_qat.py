"""lowbit.qat: distillation from the float model raises a W4A8 sim's agreement with it, the trained sim
exports what it computes (onnxruntime agrees), and bad input is one LowbitError line that leaves the sim
as it was after the last good step."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from lowbit.errors import DataError, NotCalibratedError, OptimizationError, SpecError
from lowbit.onnx import OnnxQuantSim
from lowbit.training.loop import distillation_loss
from lowbit.training.qat import float_model
from lowbit.zoo import tiny_resnet


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    model = tiny_resnet().eval()
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(16, 3, 32, 32, generator=generator) for _ in range(6)]
    held_out = [torch.randn(64, 3, 32, 32, generator=generator)]
    return model, data, held_out


def _agreement(sim, model, batches) -> float:
    with torch.no_grad():
        return float(torch.cat([(sim(b).argmax(1) == model(b).argmax(1)).float() for b in batches]).mean())


def test_qat_raises_agreement_and_the_export_computes_the_trained_sim(setting, tmp_path):
    model, data, held_out = setting
    sim = lowbit.quantize(model, data, target="w4a8")
    before = _agreement(sim, model, held_out)
    scales = {key: q.encoding.scale.clone() for key, q in sim.quantizers().items()}
    result = lowbit.qat(sim, data, steps=60, lr=1e-4, eval_data=held_out)
    losses = result.losses()
    assert len(losses) == 60 and sum(losses[-10:]) < 0.8 * sum(losses[:10]), losses
    assert result.scores()[0] == (0, pytest.approx(before)) and result.scores()[-1][0] == 60
    after = _agreement(sim, model, held_out)
    assert after > before and result.scores()[-1][1] == pytest.approx(after)
    moved = [key for key, q in sim.quantizers().items() if not torch.equal(q.encoding.scale, scales[key])]
    assert len(moved) == len(scales)  # every range learned
    assert not any(q.learning for q in sim.quantizers().values()) and not sim.training
    assert str(result).startswith("qat: 60 steps (10 epochs), loss ")
    paths = sim.export(tmp_path, name="trained", verify=held_out)
    assert paths.fidelity.top1_agreement == 1.0 and paths.fidelity.max_error_lsb <= 1.0, paths.fidelity.row()


def test_keep_best_returns_to_the_best_scoring_state(setting):
    model, data, held_out = setting

    def spoil(outputs, batch):  # pushes the sim away from the float model
        with torch.no_grad():
            target = model(batch)
        return -distillation_loss(outputs, target)

    sim = lowbit.quantize(model, data[:2], target="default")
    spoiled = copy.deepcopy(sim)
    with torch.no_grad():
        start = sim(held_out[0])
    before = _agreement(sim, model, held_out)
    lowbit.qat(spoiled, data, steps=10, lr=1e-2, loss=spoil, eval_data=held_out)
    assert _agreement(spoiled, model, held_out) < before - 0.2
    result = lowbit.qat(sim, data, steps=10, lr=1e-2, loss=spoil, eval_data=held_out, keep_best=True)
    assert result.kept_step == 0 and min(score for _, score in result.scores()[1:-1]) < before - 0.2
    with torch.no_grad():
        assert torch.equal(sim(held_out[0]), start)
    assert result.scores()[-1] == (10, pytest.approx(before))

    trained = lowbit.quantize(model, data[:2], target="w4a8")
    result = lowbit.qat(trained, data, steps=20, lr=1e-4, eval_data=held_out, keep_best=True)
    during = result.scores()[:-1]  # the last score is the kept state's, after it was made exact
    assert result.kept_step == max(during, key=lambda entry: entry[1])[0]
    assert result.scores()[-1][1] == pytest.approx(_agreement(trained, model, held_out))


def test_fixed_ranges_train_only_the_weights(setting):
    model, data, _ = setting
    sim = lowbit.quantize(model, data[:2], target="w4a8")
    scales = {key: q.encoding.scale.clone() for key, q in sim.quantizers().items()}
    weight = sim.model.get_submodule("conv1").layer.weight.detach().clone()
    lowbit.qat(sim, data[:2], steps=3, lr=1e-3, range_learning=False)
    assert all(torch.equal(q.encoding.scale, scales[key]) for key, q in sim.quantizers().items())
    assert not torch.equal(sim.model.get_submodule("conv1").layer.weight, weight)


def test_range_learning_keeps_adarounds_weight_grids(setting):
    """AdaRound chose each weight's rounding on its frozen grid, which a learned scale would re-round: range learning
    leaves those scales and learns the others."""
    model, data, _ = setting
    sim = lowbit.quantize(model, data[:2], target="w4a8", techniques=("adaround",))
    before = {key: q.encoding.scale.clone() for key, q in sim.quantizers().items()}
    frozen = {key for key, q in sim.quantizers().items() if q.frozen_by == "adaround"}
    lowbit.qat(sim, data[:2], steps=3, lr=1e-3)
    assert frozen and all(torch.equal(sim.quantizers()[key].encoding.scale, before[key]) for key in frozen)
    assert any(not torch.equal(q.encoding.scale, before[key]) for key, q in sim.quantizers().items()
               if key not in frozen)
    sim.learn_ranges()  # a training loop of the user's own: the same rule
    assert not any(sim.quantizers()[key].learning for key in frozen)
    assert any(q.learning for key, q in sim.quantizers().items() if key not in frozen)
    sim.learn_ranges(False)


def test_a_labelled_loss_sees_the_batch_as_given(setting):
    model, data, _ = setting
    sim = lowbit.quantize(model, data[:2], target="w4a8")
    labelled = [(images, torch.randint(10, (images.shape[0],))) for images in data[:2]]
    seen = []

    def cross_entropy(outputs, batch):
        seen.append(batch)
        return torch.nn.functional.cross_entropy(outputs, batch[1])

    result = lowbit.qat(sim, labelled, epochs=2, loss=cross_entropy, transform=lambda batch: batch[0])
    assert result.steps == 4 and [b[1] for b in seen] == [b[1] for b in labelled] * 2


def test_a_non_finite_loss_stops_at_its_step_and_keeps_the_previous_state(setting):
    model, data, _ = setting
    sim = lowbit.quantize(model, data[:2], target="w4a8")
    snapshots, calls = [], []

    def loss(outputs, batch):
        calls.append(1)
        if len(calls) == 3:
            snapshots.append(copy.deepcopy(sim.state_dict()))
            return outputs.sum() * float("nan")
        return outputs.pow(2).mean()

    with pytest.raises(OptimizationError, match=r"^qat: non-finite loss at step 3; the model keeps step 2's state$"):
        lowbit.qat(sim, data, steps=5, lr=1e-3, loss=loss)
    state = sim.state_dict()
    assert all(torch.equal(state[key], value) for key, value in snapshots[0].items() if "learned_" not in key)
    assert not sim.training and not any(q.learning for q in sim.quantizers().values())


def test_bad_calls_are_one_line(setting, tmp_path):
    model, data, _ = setting
    with pytest.raises(NotCalibratedError, match="calibrate"):
        lowbit.qat(lowbit.QuantSim(model, data[0][:1], target="w4a8"), data)
    sim = lowbit.quantize(model, data[:1], target="w4a8")
    with pytest.raises(DataError, match="empty"):
        lowbit.qat(sim, [], steps=2)
    with pytest.raises(DataError, match="one-pass iterator"):
        lowbit.qat(sim, iter(data[:1]), steps=2)
    with pytest.raises(SpecError, match="lr > 0"):
        lowbit.qat(sim, data, lr=0)
    with pytest.raises(SpecError, match="pass eval_data"):
        lowbit.qat(sim, data, keep_best=True)
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (data[0][:1],), str(path), dynamo=False)
    with pytest.raises(SpecError, match="qat trains a PyTorch QuantSim, not a OnnxQuantSim"):
        lowbit.qat(OnnxQuantSim(str(path)).calibrate([data[0][:1].numpy()]), data)


@pytest.mark.parametrize("techniques", [(), ("adaround",), ("bias_correction",)])
def test_the_default_teacher_is_the_float_model(setting, techniques):
    """Also where AdaRound wrote its rounding into the weights or bias correction shifted the biases: the teacher
    is the float model, not the weight-quantized one."""
    model, data, _ = setting
    sim = lowbit.quantize(model, data[:2], target="w4a8", techniques=techniques)
    teacher = float_model(sim)
    with torch.no_grad():
        torch.testing.assert_close(teacher(data[0]), model(data[0]), rtol=1e-4, atol=1e-4)  # BN folded: float error
    written = [not torch.equal(a, b) for a, b in zip(sim.model.parameters(), teacher.parameters())]
    assert any(written) == bool(techniques)  # the techniques did write into the sim's layers
    assert not any(p.requires_grad for p in teacher.parameters())


def test_the_teacher_stays_the_float_model_when_batchnorm_folds_after_adaround(setting):
    model, data, _ = setting
    sim = lowbit.quantize(model, data[:2], target="w4a8", fold_batchnorm=False, techniques=("adaround",))
    sim.fold_batchnorm()
    with torch.no_grad():
        torch.testing.assert_close(float_model(sim)(data[0]), model(data[0]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("exact", [False, True])
def test_training_forward_choice_leaves_the_sim_exact(setting, exact):
    """Training steps fake-quantize by default (one convolution per layer) or run the exact integer emulation;
    afterwards the sim computes the exact emulation again either way."""
    from lowbit.torch.weight_quantized import WeightQuantized
    model, data, _ = setting
    sim = lowbit.quantize(model, data[:2], target="w4a8")
    seen = []
    layer = next(m for m in sim.model.modules() if isinstance(m, WeightQuantized))
    hook = layer.register_forward_pre_hook(  # the teacher, a copy of the sim's model, carries the hook too
        lambda module, args: seen.append(module.exact_training) if module is layer else None)
    lowbit.qat(sim, data[:2], steps=2, lr=1e-4, exact_forward=exact)
    hook.remove()
    assert seen == [exact, exact]
    assert all(m.exact_training for m in sim.model.modules() if isinstance(m, WeightQuantized))
