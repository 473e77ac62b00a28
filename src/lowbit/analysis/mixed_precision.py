"""``lowbit.mixed_precision``: per-layer bitwidths. Phase 1 scores each layer at each candidate; phase 2 lowers, step
by step, the layer losing least score per BOP saved, to the cheapest point meeting ``float score − allowed_drop``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from lowbit.analysis.bitwidths import BitwidthSetter, layer_costs
from lowbit.analysis.layers import layer_groups
from lowbit.analysis.sensitivity import enabled_only, make_scorer, prepared_calls
from lowbit.data import batch_of
from lowbit.errors import NotCalibratedError, SpecError
from lowbit.progress import progress

DEFAULT_CANDIDATES = ((8, 8), (4, 8), (8, 16), (16, 16))


@dataclass
class ParetoPoint:
    """One configuration: its BOPs (``cost``), weight bytes, score and (weight, activation) bits per layer."""

    cost: int
    weight_bytes: float
    score: float
    bitwidths: dict[str, tuple[int, int]]
    mean_weight_bits: float


@dataclass
class MixedPrecisionResult:
    """``pareto``: the non-dominated points by cost; ``chosen``: the cheapest meeting ``target``."""

    metric: str
    float_score: float
    target: float
    pareto: list[ParetoPoint]
    chosen: ParetoPoint | None
    evaluated: list[ParetoPoint]
    phase1: dict[str, dict[tuple[int, int], float]]
    seconds: float
    report_path: Path | None = None

    def __str__(self) -> str:
        if self.chosen is None:
            return (f"mixed precision: no configuration meets {self.metric} ≥ {self.target:.4g} "
                    f"(best {max(p.score for p in self.evaluated):.4g}); the sim is left at the most precise one")
        top = max(self.evaluated, key=lambda p: p.cost)
        return (f"mixed precision: {self.metric} {self.chosen.score:.4g} (target {self.target:.4g}) at "
                f"{self.chosen.cost / top.cost:.0%} of the most precise configuration's BOPs; "
                f"{len(self.evaluated)} configurations scored in {self.seconds:.0f} s")


def mixed_precision(sim, data, eval_fn=None, candidates=DEFAULT_CANDIDATES, allowed_drop: float = 0.01,
                    metric: str = "agreement", out_dir="lowbit-report", num_batches=None,
                    transform=None, weight_bits_budget: float | None = None) -> MixedPrecisionResult:
    """Choose (weight bits, activation bits) per layer of a torch or ONNX sim from ``candidates``; see the
    module docstring. With ``weight_bits_budget`` the sim ends at the best-scoring point whose mean
    weight bits fit it."""
    from lowbit.analysis.report import write_mixed_precision_report
    start = time.perf_counter()
    if not sim.is_calibrated:
        raise NotCalibratedError("mixed_precision needs a calibrated sim: call sim.calibrate(data) first")
    candidates = _checked(candidates)
    is_onnx = isinstance(sim.model, onnx.ModelProto)
    calls = prepared_calls(data, transform, num_batches, is_onnx)
    groups = layer_groups(sim)
    costs = layer_costs(sim, groups, calls[0])
    score, metric_name, _ = make_scorer(sim, calls, eval_fn, metric)
    with enabled_only(sim, set()):
        float_score = score()
    target = float_score - allowed_drop
    setter = BitwidthSetter(sim)
    options = {g.name: _options(g, candidates, setter.quantizers) for g in groups}
    config = {g.name: options[g.name][0] for g in groups}
    by_name = {g.name: g for g in groups}

    def apply(configuration):
        for name, bits in configuration.items():
            setter.apply(by_name[name], bits)

    weights = sum(c.weights for c in costs.values()) or 1

    def point(configuration) -> ParetoPoint:
        apply(configuration)
        weight_bytes = sum(costs[n].weight_bytes(b) for n, b in configuration.items())
        return ParetoPoint(sum(costs[n].bops(b) for n, b in configuration.items()), weight_bytes, score(),
                           dict(configuration), weight_bytes * 8 / weights)

    try:
        setter.calibrate_at(groups, candidates, [batch_of(call) for call in calls])
        top = point(config)
        phase1 = {}
        for group in progress(groups, "mixed precision: phase 1", len(groups), unit="layer"):
            phase1[group.name] = {options[group.name][0]: top.score}
            for bits in options[group.name][1:]:
                setter.apply(group, bits)
                phase1[group.name][bits] = score()
            setter.apply(group, options[group.name][0])
        evaluated = [top]
        steps = sum(len(o) - 1 for o in options.values())
        for _ in progress(range(steps), "mixed precision: phase 2", steps, unit="step"):
            step = _cheapest_loss(config, options, phase1, costs)
            if step is None:
                break
            config = {**config, step[0]: step[1]}
            evaluated.append(point(config))
            over_budget = weight_bits_budget is not None and evaluated[-1].mean_weight_bits > weight_bits_budget
            if evaluated[-1].score < target and not over_budget:
                break
        pareto = pareto_front(evaluated)
        if weight_bits_budget is None:
            meeting = [p for p in pareto if p.score >= target]
            chosen = min(meeting, key=lambda p: p.cost) if meeting else None
        else:
            fitting = [p for p in evaluated if p.mean_weight_bits <= weight_bits_budget]
            chosen = max(fitting, key=lambda p: (p.score, -p.cost)) if fitting else None
        apply(chosen.bitwidths if chosen else top.bitwidths)
    except BaseException:
        setter.restore()
        raise
    result = MixedPrecisionResult(metric_name, float_score, target, pareto, chosen, evaluated, phase1,
                                  time.perf_counter() - start)
    result.report_path = write_mixed_precision_report(result, Path(out_dir))
    return result


def pareto_front(points: list[ParetoPoint]) -> list[ParetoPoint]:
    """Points no other point beats on both cost (lower) and score (higher), by increasing cost."""
    front: list[ParetoPoint] = []
    for p in sorted(points, key=lambda p: (p.cost, -p.score)):
        if not front or p.score > front[-1].score:
            front.append(p)
    return front


def _cheapest_loss(config, options, phase1, costs):
    """(layer, bits) of the next lower-cost candidate losing the least phase-1 score per BOP saved."""
    best, best_rate = None, None
    for name, bits in config.items():
        current_cost = costs[name].bops(bits)
        for candidate in options[name]:
            saving = current_cost - costs[name].bops(candidate)
            if saving <= 0:
                continue
            rate = max(phase1[name][bits] - phase1[name][candidate], 0.0) / saving
            if best_rate is None or rate < best_rate:
                best, best_rate = (name, candidate), rate
    return best


def _options(group, candidates, quantizers) -> list[tuple[int, int]]:
    """The group's candidates, most precise first; layers without weights vary activation bits only, and layers
    with frozen weight encodings (AdaRound, sequential MSE; the bitwidth setter leaves them) keep their weight bits."""
    frozen = [quantizers[key] for key in group.weights if quantizers[key].frozen]
    if frozen:
        candidates = sorted({(frozen[0].encoding.spec.bits, a) for _, a in candidates})
    elif not group.weights:
        candidates = sorted({(max(c[0] for c in candidates), a) for _, a in candidates})
    if not group.activations:
        candidates = sorted({(w, max(c[1] for c in candidates)) for w, _ in candidates})
    return sorted(set(candidates), key=lambda bits: (-bits[0] * bits[1], -bits[1]))


def _checked(candidates) -> list[tuple[int, int]]:
    result = []
    for candidate in candidates:
        if (not isinstance(candidate, (tuple, list)) or len(candidate) != 2
                or not all(isinstance(b, int) and 2 <= b <= 16 for b in candidate)):
            raise SpecError(f"each candidate must be (weight bits, activation bits) in 2..16, got {candidate!r}")
        result.append(tuple(candidate))
    if not result:
        raise SpecError("mixed_precision needs at least one candidate")
    return result
