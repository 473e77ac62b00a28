"""A sim's LoRA adapters: which quantizers are an adapter's, switching the adapter a sim runs, calibrating only
its quantizers, loading peft's saved adapters, and writing one adapter's weights and encodings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lowbit.atomic import atomic_write_bytes
from lowbit.data import batch_count
from lowbit.errors import InputError, NotCalibratedError, SpecError
from lowbit.qdq.files import quantizer_args
from lowbit.quant.quantizer import Quantizer
from lowbit.quant.encodings_file import write_encodings
from lowbit.distributed import pool_estimators
from lowbit.progress import progress
from lowbit.torch.adapter_prefix import AdapterPrefix, adapter_pause, run_adapter_part
from lowbit.torch.graph_cursor import GraphCursor
from lowbit.torch.sim_calls import batch_errors, sim_calls
from lowbit.torch.lora import AdaptedLayer
from lowbit.torch.weight_quantized import WeightQuantized

PARTS = ("down", "up")


@dataclass(frozen=True)
class AdapterPaths:
    """The two files of one adapter's export."""

    weights: Path
    encodings: Path


@dataclass
class AdapterBank:
    """Every adapter a sim knows (adapter → adapted layer path → tensor name → tensor, scaling folded into ``up``),
    the encodings of each one's quantizers once calibrated, and which adapter the sim runs."""

    active: str
    weights: dict[str, dict[str, dict[str, torch.Tensor]]]
    scalings: dict[str, float]
    output_factors: dict[str, torch.Tensor]
    encodings: dict[str, dict] = field(default_factory=dict)
    prefix: AdapterPrefix | None = None
    """The base's part of the last adapter calibration, paused before the adapters (reused on the same images)."""

    @classmethod
    def of(cls, model: nn.Module) -> AdapterBank | None:
        """The adapters of ``model``'s :class:`AdaptedLayer` s (taken, not copied: the model is the sim's working
        copy), or None when it has none."""
        layers = {path: m for path, m in model.named_modules() if isinstance(m, AdaptedLayer)}
        if not layers:
            return None
        weights: dict = {}
        for path, layer in layers.items():
            for name, tensors in layer.adapters.items():
                weights.setdefault(name, {})[path] = tensors
        first = next(iter(layers.values()))
        factors = {path: layer.output_factor for path, layer in layers.items() if layer.output_factor is not None}
        return cls(first.active, weights, dict(first.scalings), factors)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "prefix": None}  # paused runs are a cache: copies and pickles start without

    @property
    def layers(self) -> list[str]:
        return list(self.weights[self.active])

    def require(self, name: str) -> dict[str, dict[str, torch.Tensor]]:
        if name not in self.weights:
            raise InputError(f"no adapter named {name!r}; the sim has {', '.join(sorted(self.weights))}")
        return self.weights[name]


def adapter_keys(sim) -> list[str]:
    """The keys of the quantizers that belong to the running adapter: its weights, the outputs of its layers, and
    the quantizer of each adapted layer's sum base(x) + up(down(x)) (its range follows the adapter)."""
    bank = _bank(sim)
    modules = _adapter_modules(bank)
    calls = [n for n in sim.model.graph.nodes if n.op == "call_module" and n.target in modules]
    by_module = {id(q): k for k, q in sim._quantizers.items()}
    sums = {by_module[id(q)] for n in calls if n.target.endswith(".up") and (q := _quantizer_after_sum(sim.model, n))}
    nodes = {n.name for n in calls}
    return [p.key for p in sim.points if (p.role == "weight" and p.module in modules)
            or (p.role == "output" and p.node in nodes) or p.key in sums]


def _quantizer_after_sum(model: nn.Module, up) -> Quantizer | None:
    """The first quantizer after the sum that ``up``'s output flows into (through single-use ops without weights,
    such as an activation), if any."""
    node, passed_sum = up, False
    while len(node.users) == 1:
        node = next(iter(node.users))
        module = model.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, Quantizer):
            if passed_sum:
                return module
            continue
        if isinstance(module, WeightQuantized) or node.op == "output":
            return None
        passed_sum = True
    return None


def adapter_parameters(sim) -> list[nn.Parameter]:
    """The parameters of the running adapter's layers (what adapter training moves)."""
    return [p for path in _bank(sim).layers for part in PARTS for p in _layer(sim, f"{path}.{part}").parameters()]


def set_adapter(sim, name: str) -> None:
    """Run adapter ``name``: its weights into the adapter layers, its encodings (if calibrated) into its quantizers;
    the base's weights and encodings stay as they are."""
    bank = _bank(sim)
    tensors = bank.require(name)
    keys = adapter_keys(sim)
    bank.weights[bank.active] = live_tensors(sim)  # as trained, if it was
    bank.encodings[bank.active] = {k: sim._quantizers[k].encoding for k in keys}
    _write_tensors(sim, tensors)
    bank.active = name
    stored = bank.encodings.get(name)
    for key in keys:
        quantizer = sim._quantizers[key]
        quantizer.forget_encoding()
        if stored:
            quantizer.encoding, quantizer.mode = stored[key], "quantize"
    sim.encodings_changed()


def _write_tensors(sim, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
    """Copy an adapter's tensors (layer path → tensor name → tensor) into the sim's adapter layers."""
    with torch.no_grad():
        for path, layer_tensors in tensors.items():
            for tensor_name, value in layer_tensors.items():
                _tensor(sim, path, tensor_name).copy_(value)


def live_tensors(sim) -> dict[str, dict[str, torch.Tensor]]:
    """The running adapter's tensors as its layers hold them now (layer path → tensor name → tensor)."""
    bank = _bank(sim)
    return {path: {name: _tensor(sim, path, name).detach().clone() for name in tensors}
            for path, tensors in bank.weights[bank.active].items()}


def export_adapter(sim, out_dir, name: str | None = None) -> AdapterPaths:
    """Write adapter ``name``'s weights (safetensors, keyed by the exported ONNX file's tensor names) and its
    quantizers' encodings (AIMET format) under ``out_dir``, each atomically."""
    from safetensors.torch import save
    bank = _bank(sim)
    name = bank.active if name is None else name
    bank.require(name)
    keys = adapter_keys(sim)
    if name == bank.active:
        tensors, encodings = live_tensors(sim), {k: sim._quantizers[k].encoding for k in keys}
    else:
        tensors, encodings = bank.weights[name], bank.encodings.get(name) or {}
    if any(encodings.get(k) is None for k in keys):
        raise NotCalibratedError(f"adapter {name!r} has no encodings: sim.set_adapter({name!r}) then "
                                 f"sim.calibrate_adapter(data)")
    names = _tensor_names(sim)
    flat = {f"{path}.{tensor}": value.contiguous() for path, parts in tensors.items() for tensor, value in parts.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = AdapterPaths(out / f"{name}.safetensors", out / f"{name}.encodings")
    atomic_write_bytes(paths.weights, save({names.get(k, k): v.cpu() for k, v in flat.items()}))
    roles = {k: sim.point(k).role for k in keys}
    write_encodings(paths.encodings, {names[k]: e for k, e in encodings.items() if roles[k] != "weight"},
                    {names[k]: e for k, e in encodings.items() if roles[k] == "weight"},
                    quantizer_args=quantizer_args(sim.target, sim.scheme))
    return paths


def _tensor_names(sim) -> dict[str, str]:
    """Quantizer key (and parameter name) → tensor name in the exported ONNX file, from the last export or a new one."""
    if not getattr(sim, "tensor_names", None):
        from lowbit.qdq.split import split_exported_graph
        from lowbit.torch.export import exported_onnx, parameter_renames
        sim.tensor_names = split_exported_graph(exported_onnx(sim), sim.quantizers(),
                                                parameter_renames(sim.model)).tensor_names
    return sim.tensor_names


def calibrate_adapter(sim, data, transform=None, num_batches: int | None = None) -> None:
    """Encodings of the running adapter's quantizers only, computed as a full calibration computes them (weights
    quantized, the base's activations passed through in float); the base's encodings are not touched. The base's
    part of the run is kept, so the next adapter calibrated on the same images starts where the adapters begin."""
    bank = _bank(sim)
    keys = set(adapter_keys(sim))
    base = {k: q for k, q in sim._quantizers.items() if k not in keys and sim.point(k).role != "weight"}
    weights = [k for k in keys if sim.point(k).role == "weight"]
    activations = {k: sim._quantizers[k] for k in keys if k not in weights}
    for key in weights:
        sim.calibrate_weight(key)
    modes = {k: q.mode for k, q in base.items()}
    try:
        for quantizer in base.values():
            quantizer.mode = "off"
        for quantizer in activations.values():
            quantizer.start_calibration()
        bank.prefix = run_adapter_part(sim, data, transform, num_batches, _adapter_modules(bank),
                                       {sim._quantizers[k] for k in keys}, bank.prefix)
        _finish(sim, activations)
    finally:
        for key, quantizer in base.items():
            quantizer.mode = modes[key]
    sim.encodings_changed()


def observe_every_adapter(sim, data, transform) -> None:
    """The data pass of a full calibration of a sim with several adapters: each batch runs the base's part once,
    then the rest once per adapter, every activation quantizer observing (the base's after the adapters see every
    adapter; each adapter's see its own). Other adapters get their encodings here; the caller finishes the base's
    and the running adapter's quantizers."""
    bank = _bank(sim)
    keys = adapter_keys(sim)
    weights = [k for k in keys if sim.point(k).role == "weight"]
    activations = {k: sim._quantizers[k] for k in keys if k not in weights}
    states = {bank.active: _AdapterState(live_tensors(sim), {k: sim._quantizers[k].encoding for k in weights},
                                         {k: q.estimator for k, q in activations.items()})}
    pause = adapter_pause(sim.model, _adapter_modules(bank))
    try:
        for name in (n for n in bank.weights if n != bank.active):
            _write_tensors(sim, bank.weights[name])
            for key in weights:
                sim.calibrate_weight(key)
            for quantizer in activations.values():
                quantizer.start_calibration()
            states[name] = _AdapterState(bank.weights[name], {k: sim._quantizers[k].encoding for k in weights},
                                         {k: q.estimator for k, q in activations.items()})
        calls = sim_calls(data, transform, None, sim._device())
        for count, (args, kwargs) in enumerate(progress(calls, f"calibrate ({len(states)} adapters)",
                                                        batch_count(data, None))):
            with batch_errors(count):
                paused = GraphCursor(sim.model, args, kwargs)
                paused.run_to(pause)
                for index, state in enumerate(states.values()):
                    state.use(sim)
                    (paused if index == len(states) - 1 else paused.fork()).finish()
        for name, state in states.items():
            if name != bank.active:
                state.use(sim)
                pool_estimators(activations)
                _finish(sim, activations)
                bank.encodings[name] = {k: sim._quantizers[k].encoding for k in keys}
    finally:
        states[bank.active].use(sim)


@dataclass
class _AdapterState:
    """One adapter's part of a calibration: its layers' tensors, its weight encodings, its activations' estimators."""

    tensors: dict[str, dict[str, torch.Tensor]]
    weight_encodings: dict
    estimators: dict

    def use(self, sim) -> None:
        """Put this adapter's tensors and weight encodings into the sim, its estimators into its quantizers."""
        _write_tensors(sim, self.tensors)
        for key, encoding in self.weight_encodings.items():
            sim._quantizers[key].encoding = encoding
        for key, estimator in self.estimators.items():
            sim._quantizers[key].estimator, sim._quantizers[key].mode = estimator, "calibrate"


def _finish(sim, activations: dict[str, Quantizer]) -> None:
    """Encodings of the adapter's activation quantizers from what they observed."""
    for key, quantizer in activations.items():
        if quantizer.estimator.batches == 0:
            raise NotCalibratedError(f"quantizer {key!r} saw no data while calibrating the adapter")
        quantizer.finish_calibration(constraints=sim.point(key).constraints)


def _adapter_modules(bank: AdapterBank) -> set[str]:
    """The sim's module paths of every adapter layer's down and up parts."""
    return {f"{path}.{part}" for path in bank.layers for part in PARTS}


def load_adapter(sim, source, name: str, scaling: float | None = None) -> None:
    """Add adapter ``name`` from a peft ``save_pretrained`` folder (adapter_config.json + adapter_model.safetensors
    or .bin) or a state dict of peft's keys (``scaling`` then defaults to the running adapter's lora_alpha / r)."""
    bank = _bank(sim)
    if name in bank.weights:
        raise InputError(f"the sim already has an adapter named {name!r}")
    state, scaling = _read_adapter(source, scaling if scaling is not None else bank.scalings[bank.active])
    layers, tensors = bank.layers, {}
    for key, value in state.items():
        path, part, attribute = _parse_key(key, layers)
        if part == "up":  # the scaling, and the output factor of a BatchNorm folded into the layer
            factor = bank.output_factors.get(path)
            value = value * scaling if factor is None else value * scaling * factor.reshape([-1] + [1] * (value.dim() - 1))
        tensors.setdefault(path, {})[f"{part}.{attribute}"] = value
    reference = bank.weights[bank.active]
    missing = sorted(set(reference) - set(tensors))
    if missing:
        raise SpecError(f"adapter {name!r} does not adapt {missing[0]!r}: every adapter must adapt the layers of the "
                        f"sim's adapters ({len(reference)})")
    for path, parts in tensors.items():
        for tensor_name, value in parts.items():
            expected = reference[path].get(tensor_name)
            if expected is None or expected.shape != value.shape:
                raise SpecError(f"adapter {name!r}: {path}.{tensor_name} has shape {tuple(value.shape)}, the sim's "
                                f"adapters {tuple(expected.shape) if expected is not None else 'none'}")
    bank.weights[name], bank.scalings[name] = tensors, scaling


def _read_adapter(source, scaling: float) -> tuple[dict[str, torch.Tensor], float]:
    """peft's state dict and the scaling: from a folder's adapter_config.json, else ``scaling``."""
    if isinstance(source, dict):
        return source, scaling
    folder = Path(source)
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise InputError(f"{folder} holds no adapter_config.json: pass a peft save_pretrained folder or a state dict")
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise SpecError(f"{folder}: lowbit loads plain LoRA adapters, not {config.get('peft_type')} "
                        f"{'(DoRA)' if config.get('use_dora') else ''}".rstrip())
    rank, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
    if (folder / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file
        return load_file(str(folder / "adapter_model.safetensors")), scaling
    return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True), scaling


def _parse_key(key: str, layers: list[str]) -> tuple[str, str, str]:
    """(layer path, "down"/"up", attribute) of a peft state-dict key such as
    ``base_model.model.features.15.conv.2.lora_A.weight`` (or ``...lora_A.<adapter>.weight``)."""
    for marker, part in ((".lora_A.", "down"), (".lora_B.", "up")):
        if marker in key:
            prefix, attribute = key.split(marker, 1)
            path = next((p for p in layers if prefix == p or prefix.endswith("." + p)), None)
            if path is not None:
                return path, part, attribute.rsplit(".", 1)[-1]
    raise SpecError(f"adapter key {key!r} names no adapted layer of the sim")


def _tensor(sim, path: str, tensor_name: str) -> torch.Tensor:
    """The sim's live tensor ``tensor_name`` ("down.weight", "up.bias", ...) of adapted layer ``path``."""
    part, attribute = tensor_name.split(".", 1)
    return getattr(_layer(sim, f"{path}.{part}"), attribute)


def _layer(sim, path: str) -> nn.Module:
    module = sim.model.get_submodule(path)
    return getattr(module, "layer", module)


def _bank(sim) -> AdapterBank:
    if sim.adapters is None:
        raise SpecError("the sim has no LoRA adapters: build it from a peft LoRA model")
    if sim.capture_mode != "fx":
        raise SpecError(f"the sim's adapters cannot be switched: torch.fx could not trace the model "
                        f"({sim.capture_note}); LoRA adapters need a traceable model")
    return sim.adapters
