"""The base network's values where a LoRA sim's adapters begin, kept per calibration batch: the base is frozen, so
each adapter calibrated on the same images resumes there instead of running the whole network again."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import torch
from torch import fx, nn

from lowbit.data import tensors_of
from lowbit.progress import progress
from lowbit.quant.quantizer import Quantizer
from lowbit.torch.graph_cursor import GraphCursor
from lowbit.torch.sim_calls import batch_errors, sim_calls

MAX_KEPT_BYTES = 1 << 29
"""Paused runs holding more than this (512 MiB) are used once and not kept."""


@dataclass
class AdapterPrefix:
    """Runs of the sim paused before its first adapter op, one per batch, and the digest of what they were run on
    (the batches, the base's tensors and quantizer modes)."""

    digest: bytes
    cursors: list[GraphCursor]


def run_adapter_part(sim, data, transform, num_batches: int | None, adapter_modules: set[str],
                     adapter_quantizers: set[nn.Module], kept: AdapterPrefix | None) -> AdapterPrefix | None:
    """Run every batch of ``data`` through the sim, resuming from ``kept`` when it was paused on the same batches
    and base; returns the paused runs to keep (None: too large to keep)."""
    calls = list(sim_calls(data, transform, num_batches, sim._device()))
    nodes = list(sim.model.graph.nodes)
    pause = next(i for i, node in enumerate(nodes) if node.op == "call_module" and node.target in adapter_modules)
    digest = _digest(sim.model, calls, nodes[:pause], adapter_quantizers)
    if kept is None or kept.digest != digest:
        kept = AdapterPrefix(digest, _paused_runs(sim.model, calls, pause))
    for count, cursor in enumerate(progress(kept.cursors, "calibrate adapter")):
        with batch_errors(count):
            cursor.fork().finish()
    held = sum(t.numel() * t.element_size() for c in kept.cursors for t in c.held_tensors())
    return kept if held <= MAX_KEPT_BYTES else None


def _paused_runs(model: nn.Module, calls: list, pause: int) -> list[GraphCursor]:
    """One run per call, paused before graph node ``pause`` (the first that calls an adapter module)."""
    cursors = []
    for count, (args, kwargs) in enumerate(progress(calls, "calibrate adapter: base part")):
        cursors.append(GraphCursor(model, args, kwargs))
        with batch_errors(count):
            cursors[-1].run_to(pause)
    return cursors


def _digest(model: nn.Module, calls: list, before: list[fx.Node], adapter_quantizers: set[nn.Module]) -> bytes:
    """A hash of the batches and of what the nodes ``before`` the pause read: their modules' tensors and quantizer
    modes, their constants (the rest of the network runs again on every adapter calibration)."""
    hasher = hashlib.sha1(usedforsecurity=False)  # an identity check, not a security one: the fastest hashlib has
    for args, kwargs in calls:
        for tensor in tensors_of(args, kwargs):
            _add_tensor(hasher, tensor)
    for target in dict.fromkeys(node.target for node in before if node.op in ("call_module", "get_attr")):
        value = functools.reduce(getattr, target.split("."), model)
        hasher.update(target.encode())
        if isinstance(value, torch.Tensor):
            _add_tensor(hasher, value)
        elif isinstance(value, nn.Module) and value not in adapter_quantizers:
            for name, tensor in value.state_dict().items():
                hasher.update(name.encode())
                _add_tensor(hasher, tensor)
            hasher.update("".join(m.mode for m in value.modules() if isinstance(m, Quantizer)).encode())
    return hasher.digest()


def _add_tensor(hasher, tensor: torch.Tensor) -> None:
    """The tensor's shape, dtype and bytes, read in its memory order (channels-last images are not copied)."""
    order = sorted(range(tensor.dim()), key=lambda dim: -tensor.stride(dim))
    flat = tensor.detach().cpu().permute(order)
    flat = (flat if flat.is_contiguous() else flat.contiguous()).reshape(-1)
    hasher.update(f"{tuple(tensor.shape)}{tensor.dtype}{order}".encode())
    hasher.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
