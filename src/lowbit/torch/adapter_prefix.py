"""The base network's values where a LoRA sim's adapters begin, kept per calibration batch: the base is frozen, so
each adapter calibrated on the same images resumes there instead of running the whole network again."""

from __future__ import annotations

import functools
import itertools
import weakref
from dataclasses import dataclass

import torch
from torch import fx, nn

from lowbit.data import as_call, check_data_arguments, tensors_of
from lowbit.progress import progress
from lowbit.quant.quantizer import Quantizer
from lowbit.torch.graph_cursor import GraphCursor
from lowbit.torch.sim_calls import batch_errors, sim_calls

MAX_KEPT_BYTES = 1 << 29
"""Paused runs holding more than this (512 MiB) are used once and not kept."""


@dataclass
class AdapterPrefix:
    """Runs of the sim paused before its first adapter op, one per batch, with copies of what they read (the
    batches, the base part's tensors), which tensors those were (version and storage) and the base part's
    quantizer modes."""

    read: list[torch.Tensor]
    seen: list[tuple]
    modes: str
    cursors: list[GraphCursor]

    @classmethod
    def of(cls, read: list[torch.Tensor], modes: str, cursors: list[GraphCursor]) -> "AdapterPrefix":
        """Keep copies of ``read`` and the identity, version and storage of each tensor in it."""
        seen = [(weakref.ref(t), t._version, t.data_ptr()) for t in read]
        return cls([t.detach().clone() for t in read], seen, modes, cursors)

    def matches(self, read: list[torch.Tensor], modes: str) -> bool:
        """Whether runs on ``read`` with ``modes`` would pause where these did: each tensor the one read then,
        unwritten since, or equal to its copy."""
        return modes == self.modes and len(read) == len(self.read) and all(
            _unchanged(a, seen) or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
            for a, b, seen in zip(read, self.read, self.seen))

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.read, *(t for c in self.cursors
                                                                           for t in c.held_tensors())))


def run_adapter_part(sim, data, transform, num_batches: int | None, adapter_modules: set[str],
                     adapter_quantizers: set[nn.Module], kept: AdapterPrefix | None) -> AdapterPrefix | None:
    """Run every batch of ``data`` through the sim, resuming from ``kept`` when it was paused on the same batches
    and base; returns the paused runs to keep (None: too large to keep)."""
    check_data_arguments(data, num_batches)
    batches = [item if transform is None else transform(item) for item in itertools.islice(data, num_batches)]
    nodes = list(sim.model.graph.nodes)
    pause = adapter_pause(sim.model, adapter_modules)
    read, modes = _read_before(sim.model, batches, nodes[:pause], adapter_quantizers)
    if kept is None or not kept.matches(read, modes):  # checked and laid out only when they run
        calls = list(sim_calls(batches, None, None, sim._device()))
        kept = AdapterPrefix.of(read, modes, _paused_runs(sim.model, calls, pause))
    for count, cursor in enumerate(progress(kept.cursors, "calibrate adapter")):
        with batch_errors(count):
            cursor.fork().finish()
    return kept if kept.bytes() <= MAX_KEPT_BYTES else None


def adapter_pause(model: fx.GraphModule, adapter_modules: set[str]) -> int:
    """Index of the first graph node that calls an adapter module: where the base's part of a run ends."""
    return next(i for i, node in enumerate(model.graph.nodes)
                if node.op == "call_module" and node.target in adapter_modules)


def _unchanged(tensor: torch.Tensor, seen: tuple) -> bool:
    """Whether ``tensor`` is the tensor ``seen`` recorded, with the same version and storage (not written since)."""
    reference, version, pointer = seen
    return reference() is tensor and tensor._version == version and tensor.data_ptr() == pointer


def _paused_runs(model: nn.Module, calls: list, pause: int) -> list[GraphCursor]:
    """One run per call, paused before graph node ``pause`` (the first that calls an adapter module)."""
    cursors = []
    for count, (args, kwargs) in enumerate(progress(calls, "calibrate adapter: base part")):
        cursors.append(GraphCursor(model, args, kwargs))
        with batch_errors(count):
            cursors[-1].run_to(pause)
    return cursors


def _read_before(model: nn.Module, batches: list, before: list[fx.Node],
                 adapter_quantizers: set[nn.Module]) -> tuple[list[torch.Tensor], str]:
    """What the nodes ``before`` the pause read: the batches' tensors (as given), their modules' tensors and
    constants, and their quantizers' modes (the rest of the network runs again on every adapter calibration)."""
    read = [tensor for batch in batches for tensor in tensors_of(*as_call(batch))]
    modes = []
    for target in dict.fromkeys(node.target for node in before if node.op in ("call_module", "get_attr")):
        value = functools.reduce(getattr, target.split("."), model)
        if isinstance(value, torch.Tensor):
            read.append(value)
        elif isinstance(value, nn.Module) and value not in adapter_quantizers:
            for module in value.modules():  # each module's own tensors, read directly: this runs on every switch
                read.extend(t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None)
                if isinstance(module, Quantizer):
                    modes.append(module.mode)
    return read, ",".join(modes)
