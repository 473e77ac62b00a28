"""The training loop QAT and fine-tuning share: a student learns from data (distilled from a teacher by
default), Adam with a cosine learning-rate decay, a progress bar with the loss, a history of every step."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from lowbit.data import batch_count, channels_last_call, checked_calls, first_tensor, move_call
from lowbit.distributed import shard, world
from lowbit.errors import DataError, OptimizationError
from lowbit.progress import progress
from lowbit.training.batchnorm import batchnorms


@dataclass
class TrainingResult:
    """What a training run did: ``history`` has one entry per step (step, loss, lr) and one per
    evaluation (step, score); ``seconds`` is the wall time."""

    name: str
    steps: int
    epochs: float
    seconds: float
    history: list[dict] = field(default_factory=list)
    kept_step: int | None = None
    """With ``keep_best``: the step whose state was kept (0: the starting state)."""

    def losses(self) -> list[float]:
        """The training loss of every step, in order."""
        return [entry["loss"] for entry in self.history if "loss" in entry]

    def scores(self) -> list[tuple[int, float]]:
        """(step, evaluation score) of every evaluation, in order."""
        return [(entry["step"], entry["score"]) for entry in self.history if "score" in entry]

    def __str__(self) -> str:
        losses, scores = self.losses(), self.scores()
        window = max(1, min(10, len(losses) // 4))
        text = (f"{self.name}: {self.steps} steps ({self.epochs:.2g} epochs), loss "
                f"{sum(losses[:window]) / window:.4g} → {sum(losses[-window:]) / window:.4g}")
        if len(scores) > 1:
            text += f", eval {scores[0][1]:.4g} → {scores[-1][1]:.4g}"
        return text + f", {self.seconds:.0f} s"


def distillation_loss(outputs, teacher_outputs) -> torch.Tensor:
    """KL divergence of the teacher's softmax from the student's for classifier outputs ([batch, classes]),
    mean squared error otherwise; on the first float tensor of each output."""
    student, teacher = first_tensor(outputs), first_tensor(teacher_outputs).detach()
    if student.dim() == 2 and student.shape[1] > 1:
        return F.kl_div(F.log_softmax(student, 1), F.log_softmax(teacher, 1), log_target=True, reduction="batchmean")
    return F.mse_loss(student, teacher)


def agreement_score(outputs, teacher_outputs) -> float:
    """Top-1 agreement with the teacher for classifier outputs; otherwise SQNR in dB against the teacher."""
    student, teacher = first_tensor(outputs).float(), first_tensor(teacher_outputs).float()
    if student.dim() == 2 and student.shape[1] > 1:
        return float((student.argmax(1) == teacher.argmax(1)).float().mean())
    noise = (student - teacher).pow(2).sum().clamp(min=1e-30)
    return float(10 * torch.log10(teacher.pow(2).sum().clamp(min=1e-30) / noise))


def train(name: str, student: torch.nn.Module, data, parameter_groups: list[dict], steps: int | None = None,
          epochs: int = 1, loss: Callable | None = None, teacher: torch.nn.Module | None = None, eval_data=None,
          transform=None, finish: Callable | None = None, batchnorm_statistics: bool = True,
          keep_best: bool = False) -> TrainingResult:
    """Train ``student`` in place: Adam on ``parameter_groups`` (each with its ``lr``), decayed to 0 on a
    cosine; ``loss(outputs, batch)`` or distillation from ``teacher``; ``finish()`` runs before the last evaluation.
    BatchNorms normalise by batch statistics, or (``batchnorm_statistics=False``) keep their running ones.
    ``keep_best``: the state that scored best on ``eval_data`` (the start included) is the one kept and finished.
    OptimizationError at a non-finite loss."""
    data = shard(data)
    total = steps if steps is not None else _epoch_steps(data, epochs)
    optimizer = torch.optim.Adam(parameter_groups)
    cosine = (lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))) if total else (lambda step: 1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    device = next(iter(student.parameters())).device
    result = TrainingResult(name, 0, 0.0, 0.0)
    evaluate_every = max(1, total // 10) if total else None
    start = time.perf_counter()
    best = BestState() if keep_best and eval_data is not None else None

    def evaluate(step: int, offer: bool = True) -> None:
        result.history.append({"step": step, "score": _score(student, teacher, eval_data, transform, device)})
        if offer and best is not None:
            best.offer(result.history[-1], student)

    if eval_data is not None:
        evaluate(0)
    forward = student if world()[1] == 1 else DistributedDataParallel(student, find_unused_parameters=True)
    student.train()
    if not batchnorm_statistics:
        for module in batchnorms(student).values():
            module.eval()
    try:
        bar = progress(_batches(data, transform, steps, epochs), name, total, unit="step")
        for step, (epoch, batch, args, kwargs) in enumerate(bar, start=1):
            args, kwargs = channels_last_call(*move_call(args, kwargs, device))
            outputs = forward(*args, **kwargs)
            if loss is None:
                with torch.no_grad():
                    target = teacher(*args, **kwargs)
                value = distillation_loss(outputs, target)
            else:
                value = loss(outputs, batch)
            if not bool(torch.isfinite(value)):
                raise OptimizationError(f"{name}: non-finite loss at step {step}; the model keeps step {step - 1}'s state")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            schedule.step()
            result.history.append({"step": step, "loss": value.item(), "lr": optimizer.param_groups[0]["lr"]})
            result.steps, result.epochs = step, epoch
            bar.set_postfix(loss=f"{result.history[-1]['loss']:.4g}", refresh=False)
            if eval_data is not None and evaluate_every and step % evaluate_every == 0 and step != total:
                evaluate(step)
    finally:
        student.eval()
    if best is not None:
        if "score" not in result.history[-1]:  # the last step, unless the loop or the start just scored it
            evaluate(result.steps)
        best.restore(student)
        result.kept_step = best.step
    if finish is not None:
        finish()
    if eval_data is not None:
        evaluate(result.steps, offer=False)
    result.seconds = time.perf_counter() - start
    return result


class BestState:
    """The student's state at its best evaluation so far (the first of equal scores)."""

    def __init__(self):
        self.score, self.step, self.state = -math.inf, None, None

    def offer(self, entry: dict, student: torch.nn.Module) -> None:
        """Keep a copy of ``student``'s state if this evaluation ``entry`` beats every earlier one."""
        if entry["score"] > self.score:
            self.score, self.step = entry["score"], entry["step"]
            self.state = {k: v.detach().clone() for k, v in student.state_dict().items()}

    def restore(self, student: torch.nn.Module) -> None:
        """Load the kept state into ``student``."""
        with torch.no_grad():
            student.load_state_dict(self.state)


def _epoch_steps(data, epochs: int) -> int | None:
    """Steps in ``epochs`` passes over ``data``, where its length is known."""
    count = batch_count(data, None)
    return None if count is None else count * epochs


def _batches(data, transform, steps: int | None, epochs: int):
    """(epochs done, batch as given, args, kwargs): ``steps`` batches (passing over ``data`` as often as
    needed) or ``epochs`` passes."""
    produced, count = 0, batch_count(data, None)
    for epoch in itertools.count():
        if steps is None and epoch == epochs:
            return
        if epoch and iter(data) is data:
            raise DataError(f"the data is a one-pass iterator but {steps or epochs} {'steps' if steps else 'epochs'} "
                            f"need another pass: give a list or a DataLoader")
        given: list = []
        keep = lambda item: given.append(item) or (item if transform is None else transform(item))
        for seen, (args, kwargs) in enumerate(checked_calls(data, keep), start=1):
            produced += 1
            yield epoch + (seen / count if count else 1), given.pop(), args, kwargs
            if produced == steps:
                return


def _score(student, teacher, eval_data, transform, device) -> float:
    """``agreement_score`` of the student against the teacher over every batch of ``eval_data``."""
    outputs, targets, modes = [], [], {module: module.training for module in student.modules()}
    student.eval()
    with torch.no_grad():
        for args, kwargs in checked_calls(eval_data, transform):
            args, kwargs = channels_last_call(*move_call(args, kwargs, device))
            outputs.append(first_tensor(student(*args, **kwargs)))
            targets.append(first_tensor(teacher(*args, **kwargs)))
    for module, training in modes.items():
        module.train(training)
    return agreement_score(torch.cat(outputs), torch.cat(targets))
