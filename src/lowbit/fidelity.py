"""Fidelity: how closely onnxruntime's execution of the QDQ export matches the simulation, per output."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from lowbit.data import checked_calls, move_call
from lowbit.errors import ExportError, LowbitError, first_line
from lowbit.progress import progress
from lowbit.runtime import run, session


@dataclass(frozen=True)
class OutputFidelity:
    """One model output: per-sample argmax agreement (None where a sample has one value) and the largest error, absolute
    and in that output's LSBs (NaN when the output is not quantized), to 1e-4 LSB: float32 values of an 8-bit grid
    differ from whole steps by less."""

    name: str
    samples: int
    rank: int
    top1_agreement: float | None
    max_abs_error: float
    max_error_lsb: float

    def row(self) -> str:
        """One summary line."""
        label = "top-1 agreement" if self.rank == 2 else "argmax agreement"
        agreement = (f"{label} {self.top1_agreement:.2%} on {self.samples} samples, "
                     if self.top1_agreement is not None else "")
        quantized = self.max_error_lsb == self.max_error_lsb
        error = (f"max error {self.max_error_lsb:.1f} LSB ({self.max_abs_error:.4g})" if quantized
                 else f"max error {self.max_abs_error:.4g} (float output)")
        return agreement + error


@dataclass(frozen=True)
class Fidelity:
    """Every output's fidelity; the plain fields are the first output's."""

    outputs: tuple[OutputFidelity, ...]
    note: str = ""
    divergence: str = ""
    """Where sim and runtime first part by more than one step (a quantizer and its tensor), if they do."""

    samples = property(lambda self: self.outputs[0].samples)
    top1_agreement = property(lambda self: self.outputs[0].top1_agreement)
    max_abs_error = property(lambda self: self.outputs[0].max_abs_error)
    max_error_lsb = property(lambda self: self.outputs[0].max_error_lsb)

    def row(self) -> str:
        """One line: the only output's summary, or each output's named."""
        rows = (self.outputs[0].row() if len(self.outputs) == 1
                else "; ".join(f"{o.name}: {o.row()}" for o in self.outputs))
        rows += f"; first divergence: {self.divergence}" if self.divergence else ""
        return f"{rows} ({self.note})" if self.note else rows


def output_lsbs(sim) -> list[float]:
    """Scale of the per-tensor quantizer on each of the model's outputs, in output order; NaN where an
    output is not quantized per tensor."""
    if hasattr(sim, "output_lsbs"):
        return sim.output_lsbs()
    graph = getattr(sim.model, "graph", None)
    if graph is None:
        return []
    output = next(n for n in graph.nodes if n.op == "output")
    lsbs = []
    for producer in torch.utils._pytree.tree_leaves(output.args[0]):
        scale = float("nan")
        if hasattr(producer, "op") and producer.op == "call_module":
            quantizer = sim.model.get_submodule(producer.target)
            if getattr(quantizer, "encoding", None) is not None and quantizer.spec.axis is None:
                scale = float(quantizer.encoding.scale)
        lsbs.append(scale)
    return lsbs


def output_lsb(sim) -> float:
    """Scale of the quantizer on the model's first output; NaN if the output is not quantized."""
    return (output_lsbs(sim) or [float("nan")])[0]


class _OutputTally:
    """Running agreement and worst error of one output."""

    def __init__(self):
        self.agree, self.count, self.rows, self.worst, self.rank = 0, 0, 0, 0.0, 0

    def add(self, simulated: np.ndarray, executed: np.ndarray) -> None:
        simulated = simulated.astype(np.float64).reshape(executed.shape)
        self.rank = executed.ndim
        if executed.size:
            self.worst = max(self.worst, float(np.abs(simulated - executed).max()))
        if executed.ndim == 0:
            return
        self.rows += executed.shape[0]
        flat_sim = simulated.reshape(executed.shape[0], -1)
        flat_run = executed.reshape(executed.shape[0], -1)
        if flat_run.shape[1] > 1:
            self.agree += int((flat_sim.argmax(1) == flat_run.argmax(1)).sum())
            self.count += flat_sim.shape[0]


def measure_fidelity(sim, qdq_path, data, threads: int | None = None) -> Fidelity:
    """Run the sim and onnxruntime (integer kernels) on the same batches and compare every output."""
    runtime = session(qdq_path, threads=threads)
    return compare_outputs(sim, [o.name for o in runtime.get_outputs()], lambda item: run(runtime, item), data)


def compare_outputs(sim, names: list[str], execute, data) -> Fidelity:
    """Run the sim and ``execute`` (a runtime: batch as given → its outputs as arrays) on the same batches and compare
    every output."""
    tallies = [_OutputTally() for _ in names]
    device = next(iter(sim.parameters()), torch.empty(0)).device if hasattr(sim, "parameters") else "cpu"
    with torch.no_grad():
        for args, kwargs in progress(checked_calls(data), "fidelity"):
            item = kwargs if kwargs else args
            args, kwargs = move_call(args, kwargs, device)
            for tally, value, executed in zip(tallies, output_arrays(sim(*args, **kwargs)), execute(item)):
                tally.add(value, executed)
    lsbs = output_lsbs(sim)
    lsbs += [float("nan")] * (len(names) - len(lsbs))
    return Fidelity(tuple(
        OutputFidelity(name, t.rows, t.rank, t.agree / t.count if t.count else None, t.worst,
                       round(t.worst / lsb, 4) if lsb == lsb else float("nan"))
        for name, t, lsb in zip(names, tallies, lsbs)))


def verify_export(sim, paths, data, note: str = ""):
    """``paths`` (an export of ``sim``) with the fidelity of its QDQ file on ``data``; when onnxruntime
    cannot run the file, its three files are removed and ExportError says why."""
    try:
        fidelity = measure_fidelity(sim, paths.qdq_onnx, data)
    except LowbitError:
        raise
    except Exception as error:
        for path in paths:
            path.unlink(missing_ok=True)
        raise ExportError(f"onnxruntime cannot run the written {paths.qdq_onnx.name} (files removed): "
                          f"{first_line(error)}") from None
    divergence = ""
    if any(o.max_error_lsb > 1.0001 for o in fidelity.outputs):
        first = next(iter(checked_calls(data, num_batches=1)))
        divergence = sim.first_divergence(paths.qdq_onnx, first[1] or first[0]) or ""
    return replace(paths, fidelity=replace(fidelity, note=note, divergence=divergence))


def output_arrays(result) -> list[np.ndarray]:
    """A model's outputs (tensor, array, tuple, list or dict) as numpy arrays, in export order."""
    leaves = torch.utils._pytree.tree_leaves(result)
    return [leaf.detach().float().cpu().numpy() if isinstance(leaf, torch.Tensor) else np.asarray(leaf)
            for leaf in leaves if isinstance(leaf, (torch.Tensor, np.ndarray))]
