"""peft LoRA models as plain modules the sim traces: each LoRA layer becomes base(x) + up(down(x)), the adapter's
scaling folded into ``up``; every adapter's weights are kept aside so the sim can switch between them."""

from __future__ import annotations

import copy
import importlib.metadata

import torch
from torch import nn

from lowbit.errors import InputError, SpecError

SUPPORTED_PEFT = (0, 10)
"""The oldest peft release whose LoRA layers (``base_layer``, ``lora_A``/``lora_B`` dicts, ``scaling``) lowbit reads."""


class AdaptedLayer(nn.Module):
    """A Conv2d or Linear with low-rank adapters, running one: ``base(x) + up(down(x))``, as the runtime computes it.
    ``adapters`` holds every adapter's tensors (name → {"down.weight": ..., "up.weight": ...}, ``scalings`` folded
    into up)."""

    def __init__(self, base: nn.Module, down: nn.Module, up: nn.Module, adapters: dict, active: str,
                 scalings: dict[str, float]):
        super().__init__()
        self.base, self.down, self.up = base, down, up
        self.adapters, self.active, self.scalings = adapters, active, scalings
        self.output_factor: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))

    @torch.no_grad()
    def scale_outputs(self, factor: torch.Tensor) -> None:
        """Multiply every adapter's output channels by ``factor`` (a BatchNorm folded into the base), and remember
        it (``output_factor``) for adapters loaded later."""
        self.output_factor = factor.clone() if self.output_factor is None else self.output_factor * factor
        for tensors in [*self.adapters.values(), dict(self.up.named_parameters(prefix="up"))]:
            for name, tensor in tensors.items():
                if name.startswith("up."):
                    tensor.mul_(factor.reshape([-1] + [1] * (tensor.dim() - 1)))


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is (or holds) a peft LoRA model, recognised without importing peft."""
    return any(type(m).__module__.startswith("peft.tuners.lora") for m in model.modules())


def adapter_weights(lora_layer, name: str) -> dict[str, torch.Tensor]:
    """One adapter's tensors of a peft LoRA layer: down/up weights (and biases), the scaling folded into up."""
    scaling = float(lora_layer.scaling[name])
    weights = {f"down.{k}": v.detach().clone() for k, v in lora_layer.lora_A[name].state_dict().items()}
    weights.update({f"up.{k}": v.detach() * scaling for k, v in lora_layer.lora_B[name].state_dict().items()})
    return weights


def check_peft_version(version: str | None = None) -> None:
    """SpecError unless peft ``version`` (default: the installed one) is one lowbit reads."""
    version = importlib.metadata.version("peft") if version is None else version
    if tuple(int(part) for part in version.split(".")[:2]) < SUPPORTED_PEFT:
        raise SpecError(f"peft {version} is not supported: lowbit reads peft ≥ {'.'.join(map(str, SUPPORTED_PEFT))}'s "
                        f"LoRA layers (pip install -U 'lowbit[lora]')")


def working_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` lowbit may change: a peft LoRA model's with its LoRA layers made adapted layers."""
    return with_adapted_layers(model) if is_peft_model(model) else copy.deepcopy(model)


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {path: m for path, m in model.named_modules() if type(m).__module__.startswith("peft.tuners.lora")
            and hasattr(m, "lora_A") and hasattr(m, "base_layer")}


def _check_layer(path: str, layer) -> None:
    base = layer.base_layer
    if not isinstance(base, (nn.Conv2d, nn.Linear)):
        raise SpecError(f"LoRA layer {path!r} adapts a {type(base).__name__}: lowbit supports LoRA on Conv2d and Linear")
    if getattr(layer, "merged", False):
        raise SpecError(f"LoRA layer {path!r} is merged into its base: unmerge it (model.unmerge_adapter()) first")
    if any(getattr(layer, "use_dora", {}).values()) or getattr(layer, "lora_variant", None):
        raise SpecError(f"LoRA layer {path!r} uses a LoRA variant (DoRA, ...): lowbit supports plain LoRA")


def with_adapted_layers(model: nn.Module) -> nn.Module:
    """A copy of the model under ``model`` (a PeftModel or a model with peft LoRA layers), each LoRA layer an
    :class:`AdaptedLayer` running the active adapter and holding every adapter's tensors."""
    check_peft_version()
    inner = copy.deepcopy(model.get_base_model() if hasattr(model, "get_base_model") else model)
    layers = _lora_layers(inner)
    if not layers:
        raise InputError("the peft model has no LoRA layer")
    active = list(next(iter(layers.values())).active_adapters)
    if len(active) != 1:
        raise SpecError(f"the peft model has {len(active)} active adapters ({', '.join(active)}): activate one "
                        f"(model.set_adapter(name)); the sim switches between them with sim.set_adapter")
    for path, layer in layers.items():
        _check_layer(path, layer)
        adapters = {name: adapter_weights(layer, name) for name in layer.lora_A}
        down, up = copy.deepcopy(layer.lora_A[active[0]]), copy.deepcopy(layer.lora_B[active[0]])
        up.load_state_dict({k[3:]: v for k, v in adapters[active[0]].items() if k.startswith("up.")})
        scalings = {name: float(layer.scaling[name]) for name in adapters}
        inner.set_submodule(path, AdaptedLayer(layer.base_layer, down, up, adapters, active[0], scalings))
    return inner
