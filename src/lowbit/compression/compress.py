"""``lowbit.compress``: each layer scored on data at candidate ratios, per-layer ratios chosen at equal loss to meet
a MAC target (AIMET's greedy selection), applied to a copy, then fine-tuned by distillation from the original."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lowbit.compression.channels import ChannelChain, prunable_layers, prune_channels
from lowbit.compression.costs import model_costs
from lowbit.compression.svd import spatial_svd, weight_svd
from lowbit.data import batch_of, channels_last_call, checked_calls, first_tensor
from lowbit.errors import DataError, SpecError
from lowbit.progress import progress
from lowbit.torch.batchnorm_fold import own_forward
from lowbit.torch.eval_mode import eval_mode
from lowbit.training.loop import agreement_score, distillation_loss, train

METHODS = ("spatial_svd", "weight_svd", "channel_pruning")
CANDIDATES = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
"""The fractions of a layer's MACs (SVD) or input channels (pruning) each layer is scored at."""
CHANNEL_MULTIPLE = 16
"""Kept channels and ranks are multiples of this: onnxruntime's int8 depthwise kernel and its blocked NCHWc layout
(16-wide on AVX-512) take whole blocks of 16 channels; a MobileNet chain of 88 hidden channels ran slower in int8 than
one of 96 (``bench/bench_channel_alignment.py``, docs/compression.md)."""
MIN_SPATIAL_SVD_INPUTS = 8
"""Convolutions with fewer input channels are not spatial-SVD'd: the k×1 half is too thin to run faster (the RGB
convolution's split ran slower than the original in int8)."""
DEFAULT_LR = 1e-5
"""Fine-tuning a trained network on few images: ten times this rate unlearns what the images do not show
(docs/compression.md)."""
_LOW_RANK = {"spatial_svd": spatial_svd, "weight_svd": weight_svd}
MAX_SELECTIONS = 5
MAC_TOLERANCE = 0.01
"""The applied model may exceed the MAC target by this fraction; the selection is redone up to MAX_SELECTIONS times."""


@dataclass(frozen=True)
class Candidate:
    """One layer compressed alone by ``method``: ``kept`` rank or channels of ``full``, the MACs it saves, its loss
    on the data."""

    method: str
    ratio: float
    kept: int
    full: int
    macs_saved: int
    loss: float


@dataclass
class CompressionResult:
    """The smaller ``model``, each compressed layer's (method, kept, of), MACs and parameters (before, after),
    the score before and after fine-tuning, the per-layer ``curves``, layers left as they were and why."""

    model: nn.Module
    ratios: dict[str, tuple[str, int, int]]
    macs: tuple[int, int]
    params: tuple[int, int]
    score: tuple[float, float]
    seconds: float
    curves: dict[str, list[Candidate]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    report_path: Path | None = None
    kept_step: int | None = None
    """With ``keep_best``: the fine-tuning step whose weights were kept (0: as compressed, before fine-tuning)."""

    def __str__(self) -> str:
        (m0, m1), (p0, p1) = self.macs, self.params
        return (f"compress: {len(self.ratios)} layers, MACs {m0 / 1e6:.1f} M → {m1 / 1e6:.1f} M ({m1 / m0:.0%}), "
                f"params {p0 / 1e6:.2f} M → {p1 / 1e6:.2f} M, score {self.score[0]:.4g} → {self.score[1]:.4g} "
                f"after fine-tuning, {self.seconds:.0f} s")


def _methods_for(name: str, layer: nn.Module, chains: dict, methods) -> tuple[dict[str, int], list[str]]:
    """Each of ``methods`` that applies to ``layer`` with its full rank or channel count, and why the others do not."""
    dense = (isinstance(layer, nn.Linear) or isinstance(layer, nn.Conv2d) and layer.groups == 1) \
        and getattr(layer, "padding_mode", "zeros") == "zeros" and not own_forward(layer)
    applies, reasons = {}, []
    for method in methods:
        if method == "channel_pruning":
            chain = chains.get(name)
            if isinstance(chain, ChannelChain):
                applies[method] = layer.weight.shape[1]
            else:
                reasons.append(f"channel pruning: {chain or 'not a dense layer'}")
        elif method == "spatial_svd" and isinstance(layer, nn.Conv2d) and layer.in_channels < MIN_SPATIAL_SVD_INPUTS:
            reasons.append(f"spatial SVD: {layer.in_channels} input channels make a k×1 layer too thin to run faster")
        elif method == "spatial_svd" and dense and isinstance(layer, nn.Conv2d) and min(layer.kernel_size) > 1:
            out_channels, in_channels, height, width = layer.weight.shape
            applies[method] = min(in_channels * height, out_channels * width)
        elif method == "weight_svd" and dense:
            applies[method] = min(layer.weight.shape[0], layer.weight[0].numel())
        else:
            reasons.append(f"{method}: needs a torch {'k×k Conv2d' if method == 'spatial_svd' else 'Conv2d or Linear'}"
                           f" with one group and zero padding")
    return applies, reasons


def _apply(model: nn.Module, name: str, method: str, kept: int, data, reference: nn.Module | None = None) -> nn.Module:
    """A copy of ``model`` with layer ``name`` compressed by ``method`` to ``kept`` rank or channels; pruned weights
    refit to ``reference``'s output of that layer (default: ``model``'s)."""
    if method == "channel_pruning":
        return prune_channels(model, name, kept, data, num_batches=None, reference=reference).model
    compressed = copy.deepcopy(model)
    compressed.set_submodule(name, _LOW_RANK[method](compressed.get_submodule(name), kept))
    return compressed


def _kept_for(layer: nn.Module, method: str, full: int, ratio: float, input_shape, layer_macs: int) -> int:
    """The rank or channel count that keeps about ``ratio`` of the layer's MACs (pruning: of its channels), a multiple
    of :data:`CHANNEL_MULTIPLE` where the layer has that many."""
    if method == "channel_pruning":
        return _aligned(ratio * full, full)
    rank_macs = model_costs(_LOW_RANK[method](layer, 1), torch.zeros(1, *input_shape[1:])).macs
    return _aligned(ratio * layer_macs / rank_macs, full)


def _aligned(count: float, full: int) -> int:
    """``count`` rounded to a multiple of CHANNEL_MULTIPLE (at least one), or to a whole number for small layers."""
    if full < 2 * CHANNEL_MULTIPLE:
        return max(1, round(count))
    return CHANNEL_MULTIPLE * max(1, round(count / CHANNEL_MULTIPLE))


def _fitting_and_scoring(data, num_batches: int, refit_batches: int) -> tuple[list, list, list]:
    """(batches the candidates' refits solve on, calls they are scored on, batches the chosen layers' refits solve on):
    ``num_batches`` of ``data`` each for the first two, disjoint (as many as ``data`` gives, split in two halves; a
    scored refit on its own images would hide its overfitting), then the fitting batches and those after the scoring
    ones, up to ``refit_batches``."""
    wanted = num_batches + max(num_batches, refit_batches)
    calls = [channels_last_call(*call) for call in checked_calls(data, None, wanted)]
    if len(calls) < 2:
        raise DataError(f"compress refits layers on some batches and scores them on others: the data gave "
                        f"{len(calls)} batch, give at least 2 (best {2 * num_batches})")
    half = min(num_batches, (len(calls) + 1) // 2)
    fitting = [batch_of(call) for call in calls[:half]]
    return fitting, calls[half:2 * half], (fitting + [batch_of(call) for call in calls[2 * half:]])[:refit_batches]


@torch.no_grad()
def _loss(model: nn.Module, calls, targets) -> float:
    """Mean distillation loss of ``model``'s outputs against ``targets`` over ``calls``."""
    return float(sum(distillation_loss(model(*args, **kwargs), target) for (args, kwargs), target
                     in zip(calls, targets)) / len(calls))


@torch.no_grad()
def _score(model: nn.Module, calls, targets, eval_fn) -> float:
    """``eval_fn(model)``, or top-1 agreement (SQNR for other outputs) with ``targets`` over ``calls``."""
    if eval_fn is not None:
        return float(eval_fn(model))
    outputs = torch.cat([first_tensor(model(*args, **kwargs)) for args, kwargs in calls])
    return agreement_score(outputs, torch.cat([first_tensor(t) for t in targets]))


def _choose(curves: dict, target_saved: int) -> dict[str, Candidate] | None:
    """At the lowest loss level where ``target_saved`` MACs can be saved, each layer's most saving candidate within
    that loss (nothing where none is); None when no level saves enough."""

    def at(level: float) -> dict[str, Candidate]:
        chosen = {}
        for name, candidates in curves.items():
            within = [c for c in candidates if c.loss <= level]
            if within:
                chosen[name] = max(within, key=lambda c: c.macs_saved)
        return chosen

    def saves_enough(level: float) -> bool:
        return sum(c.macs_saved for c in at(level).values()) >= target_saved

    levels = sorted({c.loss for candidates in curves.values() for c in candidates})
    if not levels or not saves_enough(levels[-1]):
        return None
    low, high = 0, len(levels) - 1
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if saves_enough(levels[middle]) else (middle + 1, high)
    return at(levels[low])


def _select(model: nn.Module, curves: dict, total: int, target: int, example, batches):
    """(compressed copy, choices) at the lowest equal-loss level whose applied model has at most ``target`` MACs
    (savings that overlap, a layer pruned whose producer was also compressed, are measured and made up)."""
    wanted = total - target
    for _ in range(MAX_SELECTIONS):
        chosen = _choose(curves, wanted)
        if chosen is None:
            reachable = total - sum(max(c.macs_saved for c in cs) for cs in curves.values())
            raise SpecError(f"{target / total:.0%} of the MACs is out of reach: the methods reach about "
                            f"{reachable / total:.0%} at the most")
        compressed = copy.deepcopy(model)
        for name, candidate in chosen.items():  # in running order: each refit makes up for the layers before
            compressed = _apply(compressed, name, candidate.method, candidate.kept, batches, reference=model)
        actual = model_costs(compressed, example).macs
        if actual <= target * (1 + MAC_TOLERANCE):
            break
        wanted += actual - target
    return compressed, chosen


def compress(model: nn.Module, data, macs: float = 0.5, methods=("spatial_svd", "channel_pruning"), eval_fn=None,
             eval_data=None, fine_tune_steps: int = 500, lr: float | None = None, exclude=(),
             out_dir="lowbit-report", num_batches: int = 2, refit_batches: int = 8,
             keep_best: bool = False) -> CompressionResult:
    """A smaller copy of ``model`` with about ``macs`` of its MACs: each layer compressed by every method that applies
    at :data:`CANDIDATES`, refit on ``num_batches`` of ``data`` and scored on the next ``num_batches`` (images the refit
    did not see), ratios chosen at equal loss, the chosen layers refit on up to ``refit_batches`` (the fitting batches
    and those after the scoring ones), then ``fine_tune_steps`` of distillation from ``model``.
    ``eval_fn(model)`` (higher is better) or agreement on ``eval_data`` (default: the scoring batches) scores it.
    ``keep_best``: the fine-tuned state agreeing best with ``model`` on ``eval_data`` (the start included) is kept."""
    start = time.perf_counter()
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SpecError(f"methods are some of {', '.join(METHODS)}; got {', '.join(unknown) or 'none'}")
    if not 0 < macs < 1:
        raise SpecError(f"macs is the fraction of the MACs to keep, in (0, 1); got {macs}")
    if refit_batches < 1:
        raise SpecError(f"refit_batches is how many batches the chosen layers refit on, at least 1; "
                        f"got {refit_batches}")
    if keep_best and eval_data is None:
        raise SpecError("keep_best keeps the fine-tuned state that scores best on eval_data: pass eval_data, images "
                        "the fine-tuning does not see")
    batches, calls, refit = _fitting_and_scoring(data, num_batches, refit_batches)
    example = batches[0]
    names = {name for name, _ in model.named_modules()}
    missing = sorted(set(exclude) - names)
    if missing:
        raise SpecError(f"exclude names no layer of the model: {', '.join(missing)}")
    with eval_mode(model):
        with torch.no_grad():
            targets = [model(*args, **kwargs) for args, kwargs in calls]
            eval_data = None if eval_data is None else list(eval_data)  # scored more than once
            eval_calls = calls if eval_data is None else list(checked_calls(eval_data))
            eval_targets = targets if eval_data is None else [model(*a, **k) for a, k in eval_calls]
        before = model_costs(model, example)
        chains = prunable_layers(model, example)
        curves, skipped = {}, {}
        shapes = before.inputs  # in the order the layers run: the selection applies (and refits) them so
        layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in exclude}
        running = {name: index for index, name in enumerate(shapes)}
        layers = dict(sorted(layers.items(), key=lambda item: running.get(item[0], len(running))))
        for name, layer in progress(layers.items(), "compress: scoring layers", len(layers)):
            if name not in shapes:
                skipped[name] = "it never runs on the data"
                continue
            applies, reasons = _methods_for(name, layer, chains, methods)
            candidates = []
            for method, full in applies.items():
                seen = set()
                for ratio in CANDIDATES:
                    kept = _kept_for(layer, method, full, ratio, shapes[name], before.layers[name][0])
                    if kept >= full or kept in seen:
                        continue
                    seen.add(kept)
                    trial = _apply(model, name, method, kept, batches).eval()
                    saved = before.macs - model_costs(trial, example).macs
                    candidates.append(Candidate(method, ratio, kept, full, saved, _loss(trial, calls, targets)))
            if candidates:
                curves[name] = candidates
            else:
                skipped[name] = "; ".join(reasons) or "no candidate ratio saves anything"
        compressed, chosen = _select(model, curves, before.macs, int(before.macs * macs), example, refit)
        score_before = _score(compressed.eval(), eval_calls, eval_targets, eval_fn)
        kept_step = None
        if fine_tune_steps:
            parameters = [p for p in compressed.parameters() if p.requires_grad]
            groups = [{"params": parameters, "lr": lr or DEFAULT_LR}]
            kept_step = train("compress fine-tuning", compressed, data, groups, fine_tune_steps, teacher=model,
                              eval_data=eval_data if keep_best else None, batchnorm_statistics=False,
                              keep_best=keep_best).kept_step
        score_after = _score(compressed.eval(), eval_calls, eval_targets, eval_fn)
    after = model_costs(compressed, example)
    result = CompressionResult(compressed, {n: (c.method, c.kept, c.full) for n, c in chosen.items()},
                               (before.macs, after.macs), (before.params, after.params), (score_before, score_after),
                               time.perf_counter() - start, curves, skipped, kept_step=kept_step)
    if out_dir is not None:
        from lowbit.compression.report import write_compression_report
        result.report_path = write_compression_report(result, Path(out_dir))
    return result
