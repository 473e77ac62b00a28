"""``lowbit.autoquant``: stage after stage until one meets ``float score − allowed_drop``; stages are cached, so an
interrupted run resumes. Mixed precision starts from the best range scheme's sim (later stages fit one bitwidth)."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from lowbit.analysis.mixed_precision import DEFAULT_CANDIDATES, mixed_precision
from lowbit.analysis.scores import top1_agreement
from lowbit.analysis.sensitivity import prepared_calls, sim_outputs
from lowbit.atomic import atomic_write_text
from lowbit.data import as_call, batch_of, first_tensor, tensors_of
from lowbit.errors import SpecError
from lowbit.frontend import front_end
from lowbit.onnx.calibrate import run_in_slices, slice_rows
from lowbit.onnx.feeds import GraphInputs
from lowbit.onnx.quantsim import OnnxQuantSim
from lowbit.runtime import session

SCHEMES = ("mean_minmax", "sqnr", "percentile")
STAGES = ("minmax", "range schemes", "equalize + bias correction", "sequential mse + adaround", "mixed precision")
BITWIDTH_FREE = ("minmax", "range schemes")


@dataclass
class Stage:
    """One stage's outcome: its best score, wall seconds (0 when taken from the cache) and what it chose."""

    name: str
    score: float
    seconds: float
    detail: str
    cached: bool = False


@dataclass
class AutoQuantResult:
    """The best sim found, its score, every stage run, the exported files and the report."""

    sim: object
    score: float
    float_score: float
    target: float
    met: bool
    stages: list[Stage]
    export_paths: object = None
    report_path: Path | None = None

    def __str__(self) -> str:
        verdict = "meets" if self.met else "does not meet"
        return (f"autoquant: {self.score:.4g} {verdict} the target {self.target:.4g} (float {self.float_score:.4g}) "
                f"after {len(self.stages)} stages: " + ", ".join(f"{s.name} {s.score:.4g}" for s in self.stages))


def autoquant(model, data, eval_fn=None, allowed_drop: float = 0.01, example_input=None, target="default",
              param_bits: int | None = None, act_bits: int | None = None, out_dir="lowbit-report",
              adaround_iterations: int = 1000, candidates=DEFAULT_CANDIDATES, num_batches=None,
              transform=None) -> AutoQuantResult:
    """Quantize ``model`` (a torch nn.Module, or an ONNX file path or ModelProto) to meet
    ``float score − allowed_drop`` with as few techniques as possible; ``eval_fn(model_or_sim) -> float``
    (higher is better; it gets the float model, then sims), default top-1 agreement with the float
    model on ``data``. Writes the export and ``autoquant.html`` under ``out_dir``."""
    from lowbit.analysis.report import write_autoquant_report
    from lowbit.api import adaround, quantize
    steps = front_end(model)
    is_onnx = steps.onnx_graph
    if not is_onnx and not isinstance(model, torch.nn.Module):
        raise SpecError(f"autoquant takes a torch nn.Module, an ONNX model (path or ModelProto) or a Keras model, "
                        f"not {type(model).__name__}")
    calls = prepared_calls(data, transform, num_batches, is_onnx)
    batches = [batch_of(call) for call in calls]
    example_input = batches[0] if example_input is None else example_input
    model = steps.prepare(model, example_input) if is_onnx else copy.deepcopy(model).eval()
    score = eval_fn if eval_fn is not None else _agreement_with(model, calls)
    float_score = float(score(model))
    goal = float_score - allowed_drop
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = dict(target=target, param_bits=param_bits, act_bits=act_bits)
    cache = _Cache(out / "autoquant_cache.json", _fingerprint(options, allowed_drop, adaround_iterations,
                                                              candidates, batches, float_score))

    def build(scheme, techniques=()):
        sim = quantize(model, batches, example_input=example_input, scheme=scheme,
                       techniques=[t for t in techniques if t != "adaround"], **options)
        if "adaround" in techniques:
            adaround(sim, batches, num_iterations=adaround_iterations)
            sim.calibrate(batches)
        return sim

    def mixed():
        """Mixed precision on a copy of the sim of the best stage that fits nothing to one bitwidth."""
        sim = copy.deepcopy(_sim_of(_best([s for s in stages if s.name in BITWIDTH_FREE]), sims, builders))
        chosen = mixed_precision(sim, batches, eval_fn=score, candidates=candidates, allowed_drop=allowed_drop,
                                 out_dir=out).chosen
        return sim, (f"mean weight bits {chosen.mean_weight_bits:.2f}" if chosen else "no configuration met the target")

    builders = {
        "minmax": lambda: (build("minmax"), "scheme minmax"),
        "range schemes": lambda: _best_scheme(build, score),
        "equalize + bias correction": lambda: (build(best_scheme, ("equalize", "bias_correction")),
                                               f"scheme {best_scheme}"),
        "sequential mse + adaround": lambda: (build(best_scheme, ("sequential_mse", "adaround")),
                                              f"scheme {best_scheme}, {adaround_iterations} iterations"),
        "mixed precision": mixed,
    }
    stages: list[Stage] = []
    sims: dict[str, object] = {}
    best_scheme = "minmax"
    for name in STAGES:
        recorded = cache.stages.get(name)
        if recorded is not None:
            stage = Stage(name, recorded["score"], 0.0, recorded["detail"], cached=True)
        else:
            start = time.perf_counter()
            sims[name], detail = builders[name]()
            stage = Stage(name, float(score(sims[name])), time.perf_counter() - start, detail)
            cache.put(name, stage)
        stages.append(stage)
        if name == "range schemes" and stage.score > stages[0].score:
            best_scheme = stage.detail.split()[1]
        if stage.score >= goal:
            break
    best = _best(stages)
    sim = _sim_of(best, sims, builders)
    result = AutoQuantResult(sim, best.score, float_score, goal, best.score >= goal, stages)
    result.export_paths = sim.export(out, name="model")
    result.report_path = write_autoquant_report(result, out)
    return result


def _best(stages: list[Stage]) -> Stage:
    """The highest-scoring stage (the earliest on ties: fewer techniques)."""
    return max(reversed(stages), key=lambda s: s.score)


def _sim_of(stage: Stage, sims: dict, builders: dict):
    """The stage's sim, rebuilt (deterministically) when the stage came from the cache."""
    if stage.name not in sims:
        sims[stage.name] = builders[stage.name]()[0]
    return sims[stage.name]


def _best_scheme(build, score):
    """The best of the non-min-max range schemes, as (sim, "scheme NAME")."""
    sim, scheme = max(((build(scheme), scheme) for scheme in SCHEMES), key=lambda built: float(score(built[0])))
    return sim, f"scheme {scheme}"


def _agreement_with(model, calls):
    """score(model_or_sim): top-1 agreement with ``model``'s float outputs on ``calls``."""
    def outputs(net):
        if isinstance(net, onnx.ModelProto):
            return _float_onnx_outputs(net, calls)
        if isinstance(net, OnnxQuantSim):
            return sim_outputs(net, calls)
        with torch.no_grad():
            return [first_tensor(net(*args, **kwargs)).float().cpu() for args, kwargs in calls]
    reference = outputs(model)
    if top1_agreement(reference, reference) is None:
        raise SpecError("autoquant without eval_fn needs a model returning 2-D class scores; pass eval_fn")

    def agreement(net) -> float:
        return top1_agreement(reference, outputs(net))
    agreement.__name__ = "top-1 agreement with float"
    return agreement


def _float_onnx_outputs(model: onnx.ModelProto, calls) -> list[torch.Tensor]:
    """The float ONNX model's first output per call, run by onnxruntime in image slices."""
    runtime, inputs = session(model.SerializeToString()), GraphInputs(model)
    feeds = [inputs.feeds(args, kwargs) for args, kwargs in calls]
    names, rows = [runtime.get_outputs()[0].name], slice_rows(model, feeds[0] if feeds else None)
    return [torch.from_numpy(run_in_slices(runtime, names, feed, rows)[0]).float() for feed in feeds]


def _fingerprint(options, allowed_drop, iterations, candidates, batches, float_score) -> str:
    """What must match for cached stages to be reused: the settings, the data and the float score."""
    digest = hashlib.sha256(json.dumps([options, allowed_drop, iterations, [list(c) for c in candidates],
                                        round(float_score, 9)], default=str).encode())
    for batch in batches:
        for tensor in tensors_of(*as_call(batch)):
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Cache:
    """Stage outcomes in a JSON file, kept only while the fingerprint matches; written atomically."""

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint
        try:
            document = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            document = {}
        self.stages = document.get("stages", {}) if document.get("fingerprint") == fingerprint else {}

    def put(self, name: str, stage: Stage) -> None:
        self.stages[name] = {"score": stage.score, "seconds": stage.seconds, "detail": stage.detail}
        atomic_write_text(self.path, json.dumps({"fingerprint": self.fingerprint, "stages": self.stages}, indent=2))
