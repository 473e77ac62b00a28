"""Quantization-aware training of a PyTorch sim: its weights and (by default) its quantizers' ranges learn,
distilled from the float model, so no labels are needed; the sim is trained in place and exports as usual."""

from __future__ import annotations

import torch

from lowbit.distributed import check_ranks
from lowbit.errors import NotCalibratedError, SpecError
from lowbit.torch.adapters import adapter_keys, adapter_parameters
from lowbit.torch.float_parameters import float_copy
from lowbit.torch.integer_add import IntegerAdd
from lowbit.torch.weight_quantized import WeightQuantized
from lowbit.training.batchnorm import batchnorms, reestimate_batchnorm
from lowbit.training.batchnorm_to_scale import batchnorm_pairs, fold_batchnorm_to_scale
from lowbit.training.loop import TrainingResult, train

DEFAULT_LR = 1e-5
"""Adam's learning rate for the weights (fine-tuning a trained model)."""
RANGE_LR_FACTOR = 100.0
"""A scale's learning rate is ``lr`` × this × the scale's mean: each step moves it by about 0.1 % at the default."""
ZERO_POINT_LR_FACTOR = 1e4
"""A zero point's learning rate (in grid steps) is ``lr`` × this: about 0.1 step per step at the default."""


def float_model(sim) -> torch.nn.Module:
    """The float model a sim simulates, in eval mode without gradients (the default teacher)."""
    return float_copy(sim.model).eval().requires_grad_(False)


def train_exactly(sim, exact: bool) -> None:
    """Training steps of ``sim`` run the exact integer emulation of each layer and addition, or (False) fake
    quantization alone, within an output step of it."""
    for module in sim.model.modules():
        if isinstance(module, (WeightQuantized, IntegerAdd)):
            module.exact_training = exact


def qat(sim, data, steps: int | None = None, epochs: int = 1, lr: float | None = None, loss=None, teacher=None,
        eval_data=None, range_learning: bool = True, reestimate_bn: bool = True, transform=None,
        exact_forward: bool = False, keep_best: bool = False) -> TrainingResult:
    """Train a calibrated ``QuantSim`` in place for ``steps`` batches (or ``epochs`` passes over ``data``); returns
    the result (``history``, ``seconds``). Loss: ``loss(outputs, batch)``, or distillation from ``teacher`` (default:
    the sim's float model). ``range_learning`` trains scales and zero points (LSQ; weight scales AdaRound froze
    stay); BatchNorms (a sim built with ``fold_batchnorm=False``) train on batch statistics, are re-estimated, then
    folded into the weights and scales.
    A sim of a peft LoRA model trains only its running adapter (weights and ranges) on the frozen quantized base.
    Training steps fake-quantize (``exact_forward=True``: the exact integer emulation, slower); evaluation is exact.
    ``keep_best``: the sim keeps the state that agreed best with the teacher on ``eval_data`` (the start included)."""
    from lowbit.torch.quantsim import QuantSim
    if not isinstance(sim, QuantSim):
        raise SpecError(f"qat trains a PyTorch QuantSim, not a {type(sim).__name__} (an ONNX sim runs in "
                        f"onnxruntime): quantize the PyTorch model, or load the ONNX file's encodings into one")
    if not sim.is_calibrated:
        raise NotCalibratedError("qat starts from calibrated encodings: call sim.calibrate(data) first")
    lr = DEFAULT_LR if lr is None else lr
    if lr <= 0 or epochs < 1 or (steps is not None and steps < 1):
        raise SpecError(f"qat needs lr > 0, epochs >= 1 and steps >= 1 (got lr={lr}, epochs={epochs}, steps={steps})")
    if keep_best and eval_data is None:
        raise SpecError("keep_best keeps the state that scores best on eval_data: pass eval_data")
    check_ranks(sim.structure, sim._device())
    batchnorm_pairs(sim)  # a BatchNorm that cannot fold after training stops it before
    teacher = float_model(sim) if teacher is None else teacher
    keys = set(adapter_keys(sim)) if sim.adapters is not None else set(sim.quantizers())
    if range_learning:
        sim.learn_ranges(True, keys=keys)
    learning = {k: q for k, q in sim.quantizers().items() if k in keys and q.learning} if range_learning else {}
    ranges = {id(p) for q in learning.values() for p in q.parameters()}
    weights = adapter_parameters(sim) if sim.adapters is not None else list(sim.model.parameters())
    groups = [{"params": [p for p in weights if p.requires_grad and id(p) not in ranges], "lr": lr}]
    for quantizer in learning.values():
        groups.append({"params": [quantizer.learned_scale], "lr": lr * RANGE_LR_FACTOR * float(quantizer.scale.mean())})
        if "learned_zero_point" in quantizer._parameters:
            groups.append({"params": [quantizer.learned_zero_point], "lr": lr * ZERO_POINT_LR_FACTOR})
    train_exactly(sim, exact_forward)

    def restore() -> None:
        train_exactly(sim, True)
        if range_learning:
            sim.learn_ranges(False)

    def settle() -> None:
        """Exact, fixed encodings again; BatchNorm statistics re-estimated, then folded into the layers."""
        restore()
        if reestimate_bn and batchnorms(sim.model):
            reestimate_batchnorm(sim, data, transform=transform)
        fold_batchnorm_to_scale(sim)

    try:
        return train("qat", sim, data, groups, steps, epochs, loss, teacher, eval_data, transform, finish=settle,
                     keep_best=keep_best)
    finally:
        restore()
