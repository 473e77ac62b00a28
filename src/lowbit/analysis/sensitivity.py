"""``lowbit.analyze``: per layer, the score with only it and with all but it quantized, its output MSE against float,
its per-channel weight ranges and its activation histogram with the clipping range; then the HTML report."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from lowbit.analysis.layers import LayerGroup, layer_configurations, layer_groups
from lowbit.analysis.observe import ActivationView, activation_views, weight_ranges
from lowbit.analysis.scores import mean_kl, sqnr_db, top1_agreement
from lowbit.data import batch_of, channels_last_call, checked_calls, first_tensor, move_call
from lowbit.errors import NotCalibratedError, SpecError
from lowbit.onnx.feeds import as_tensors
from lowbit.progress import progress

METRICS = {"sqnr": ("output SQNR (dB)", sqnr_db), "agreement": ("top-1 agreement with float", top1_agreement)}


@dataclass
class LayerSensitivity:
    """One layer's figures; scores are the metric's (higher is better), None where not applicable."""

    name: str
    op_type: str
    quantizers: tuple[str, ...]
    only: float
    all_but: float
    weight_only: float | None = None
    activation_only: float | None = None
    output_mse: float | None = None
    weight_ranges: tuple[list[float], list[float]] | None = None
    activation: ActivationView | None = None


@dataclass
class AnalysisResult:
    """``layers`` sorted most sensitive first (lowest score with only that layer quantized)."""

    metric: str
    float_score: float
    quantized_score: float
    layers: list[LayerSensitivity]
    seconds: float
    report_path: Path | None = None
    extra: dict = field(default_factory=dict)

    def __str__(self) -> str:
        worst = ", ".join(layer.name for layer in self.layers[:3])
        return (f"analyze: {len(self.layers)} layers, {self.metric} {self.quantized_score:.4g} quantized "
                f"(float {self.float_score:.4g}), most sensitive: {worst}; {self.seconds:.0f} s")


def analyze(model_or_sim, data, eval_fn=None, example_input=None, out_dir="lowbit-report", num_batches=None,
            transform=None, metric: str = "sqnr", **quantize_options) -> AnalysisResult:
    """Per-layer sensitivity of a calibrated QuantSim (or of a model, quantized here with
    ``quantize_options``) on ``data``; ``eval_fn(sim) -> float`` (higher is better) or, without it,
    ``metric`` against the float model: "sqnr" (output SQNR, dB) or "agreement" (top-1 agreement).
    Writes ``out_dir/analysis.html``."""
    if metric not in METRICS:
        raise SpecError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    from lowbit.analysis.report import write_analysis_report
    from lowbit.api import quantize
    from lowbit.frontend import front_end
    start = time.perf_counter()
    steps = front_end(model_or_sim)
    is_onnx = steps.onnx_graph
    calls = prepared_calls(data, transform, num_batches, is_onnx)
    if isinstance(model_or_sim, steps.sim_type):
        sim = model_or_sim
        if not sim.is_calibrated:
            raise NotCalibratedError("analyze needs a calibrated sim: call sim.calibrate(data) first")
    elif isinstance(model_or_sim, torch.nn.Module) or is_onnx:
        options = quantize_options if is_onnx else {"example_input": example_input, **quantize_options}
        sim = quantize(model_or_sim, [batch_of(c) for c in calls], **options)
    else:
        raise SpecError(f"analyze takes a QuantSim, an nn.Module or an ONNX model, not {type(model_or_sim).__name__}")
    groups = layer_groups(sim)
    score, metric_name, reference = make_scorer(sim, calls, eval_fn, metric)
    every = set(sim.quantizers())
    with enabled_only(sim, set()):
        float_score = score()
    quantized_score = score()
    plans = {group.name: layer_configurations(group) for group in groups}
    forked = sim.forked_outputs(calls, groups, plans, enabled_only) if reference is not None else None
    if forked is not None:
        function = METRICS[metric][1]
        layers = [_figures_from(group, {c: function(reference, forked[(group.name, c)])
                                        for c, _, _ in plans[group.name]}) for group in groups]
    else:
        layers = [_layer_figures(sim, group, every, score)
                  for group in progress(groups, "analyze", len(groups), unit="layer")]
    views = activation_views(sim, calls[0], groups)
    ranges = weight_ranges(sim, groups)
    for layer, group in zip(layers, groups):
        layer.weight_ranges = ranges.get(group.name)
        layer.activation = views.get(group.name)
        layer.output_mse = layer.activation.mse if layer.activation is not None else None
    layers.sort(key=lambda layer: (_finite(layer.only), -_finite(layer.all_but)))
    extra = {}
    if reference is not None:
        outputs = sim_outputs(sim, calls)
        extra = {"kl": mean_kl(reference, outputs), "top1_agreement": top1_agreement(reference, outputs)}
    result = AnalysisResult(metric_name, float_score, quantized_score, layers, time.perf_counter() - start,
                            extra=extra)
    result.report_path = write_analysis_report(result, Path(out_dir))
    return result


def _layer_figures(sim, group: LayerGroup, every: set[str], score) -> LayerSensitivity:
    """The group's figures, each configuration scored by running the whole model."""
    scores = {}
    for configuration, keys, _ in layer_configurations(group):
        with enabled_only(sim, every - keys if configuration == "all_but" else keys):
            scores[configuration] = score()
    return _figures_from(group, scores)


def _figures_from(group: LayerGroup, scores: dict[str, float]) -> LayerSensitivity:
    """LayerSensitivity from the configurations' scores (a layer with one kind of quantizer: its
    "only" score is also its weights-only or activations-only score)."""
    only = scores["only"]
    weight_only = scores.get("weight_only", only if group.weights else None)
    activation_only = scores.get("activation_only", only if group.activations else None)
    return LayerSensitivity(group.name, group.op_type, group.keys, only, scores["all_but"], weight_only,
                            activation_only)


def prepared_calls(data, transform, num_batches, is_onnx: bool) -> list[tuple[tuple, dict]]:
    """The checked (args, kwargs) of every batch: tensors for an ONNX sim, channels-last for a torch one."""
    prepare = (lambda item: as_tensors(transform(item) if transform else item)) if is_onnx else transform
    calls = list(checked_calls(data, prepare, num_batches))
    return calls if is_onnx else [channels_last_call(*call) for call in calls]


def make_scorer(sim, calls, eval_fn, metric: str):
    """(score(), metric name, float reference outputs or None with ``eval_fn``)."""
    if eval_fn is not None:
        return (lambda: float(eval_fn(sim))), getattr(eval_fn, "__name__", "eval_fn"), None
    with enabled_only(sim, set()):
        reference = sim_outputs(sim, calls)
    if metric == "agreement" and top1_agreement(reference, reference) is None:
        raise SpecError("metric 'agreement' needs a model returning 2-D class scores; use metric='sqnr'")
    name, function = METRICS[metric]
    return (lambda: function(reference, sim_outputs(sim, calls))), name, reference


def sim_outputs(sim, calls) -> list[torch.Tensor]:
    """The first output of a torch or ONNX sim on every call, as float tensors on the CPU."""
    if isinstance(sim.model, onnx.ModelProto):
        return [torch.from_numpy(first[0]).float() for first in sim.run_on([batch_of(c) for c in calls])]
    device = sim._device()
    with torch.no_grad():
        moved = (move_call(args, kwargs, device) for args, kwargs in calls)
        return [first_tensor(sim.model(*args, **kwargs)).detach().float().cpu() for args, kwargs in moved]


@contextmanager
def enabled_only(sim, keys: set[str]):
    """Only the quantizers named in ``keys`` quantize (those already off stay off), and layers whose weights are
    not quantized compute with their float weights (also where AdaRound or bias correction wrote); restored after."""
    quantizers = sim.quantizers()
    saved = {key: quantizer.mode for key, quantizer in quantizers.items()}
    try:
        for key, quantizer in quantizers.items():
            quantizer.mode = "quantize" if key in keys and saved[key] == "quantize" else "off"
        with sim.float_where_off():
            yield
    finally:
        for key, quantizer in quantizers.items():
            quantizer.mode = saved[key]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else (1e300 if value > 0 else -1e300)
