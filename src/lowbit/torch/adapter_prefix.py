"""The base network's values where a LoRA sim's adapters begin, kept per calibration batch: the base is frozen, so
each adapter calibrated on the same images resumes there instead of running the whole network again."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

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
    digest = _digest(sim.model, calls, adapter_modules, adapter_quantizers)
    if kept is None or kept.digest != digest:
        kept = AdapterPrefix(digest, _paused_runs(sim.model, calls, adapter_modules))
    for count, cursor in enumerate(progress(kept.cursors, "calibrate adapter")):
        with batch_errors(count):
            cursor.fork().finish()
    held = sum(t.numel() * t.element_size() for c in kept.cursors for t in c.held_tensors())
    return kept if held <= MAX_KEPT_BYTES else None


def _paused_runs(model: nn.Module, calls: list, adapter_modules: set[str]) -> list[GraphCursor]:
    """One run per call, paused before the first node that calls an adapter module."""
    nodes = list(model.graph.nodes)
    first = next(i for i, node in enumerate(nodes) if node.op == "call_module" and node.target in adapter_modules)
    cursors = []
    for count, (args, kwargs) in enumerate(progress(calls, "calibrate adapter: base part")):
        cursors.append(GraphCursor(model, args, kwargs))
        with batch_errors(count):
            cursors[-1].run_to(first)
    return cursors


def _digest(model: nn.Module, calls: list, adapter_modules: set[str], adapter_quantizers: set[nn.Module]) -> bytes:
    """A hash of the batches, of every tensor of the model outside the adapters, and of the base quantizers' modes."""
    skipped = tuple(f"{name}." for name in adapter_modules)
    skipped += tuple(f"{name}." for name, m in model.named_modules() if m in adapter_quantizers)
    hasher = hashlib.blake2b(digest_size=32)
    for args, kwargs in calls:
        for tensor in tensors_of(args, kwargs):
            _add_tensor(hasher, tensor)
    for name, tensor in model.state_dict().items():
        if not name.startswith(skipped):
            hasher.update(name.encode())
            _add_tensor(hasher, tensor)
    for module in model.modules():
        if isinstance(module, Quantizer) and module not in adapter_quantizers:
            hasher.update(module.mode.encode())
    return hasher.digest()


def _add_tensor(hasher, tensor: torch.Tensor) -> None:
    hasher.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    hasher.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
