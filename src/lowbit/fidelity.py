"""Fidelity: how closely onnxruntime's execution of the QDQ export matches the simulation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lowbit.data import checked_calls
from lowbit.progress import progress
from lowbit.runtime import run, session


@dataclass(frozen=True)
class Fidelity:
    """Top-1 agreement (sim vs runtime) and the largest output error in output LSBs."""

    samples: int
    top1_agreement: float
    max_abs_error: float
    max_error_lsb: float

    def row(self) -> str:
        """One markdown-style summary line."""
        return (f"top-1 agreement {self.top1_agreement:.2%} on {self.samples} samples, "
                f"max error {self.max_error_lsb:.1f} LSB ({self.max_abs_error:.4g})")


def output_lsb(sim) -> float:
    """Scale of the quantizer on the model's (first) output; NaN if the output is not quantized."""
    if hasattr(sim, "output_lsb"):
        return sim.output_lsb()
    graph = getattr(sim.model, "graph", None)
    if graph is None:
        return float("nan")
    output = next(n for n in graph.nodes if n.op == "output")
    producer = output.all_input_nodes[0] if output.all_input_nodes else None
    if producer is not None and producer.op == "call_module":
        quantizer = sim.model.get_submodule(producer.target)
        if getattr(quantizer, "encoding", None) is not None and quantizer.spec.axis is None:
            return float(quantizer.encoding.scale)
    return float("nan")


def measure_fidelity(sim, qdq_path, data, transform=None, num_batches: int | None = None,
                     threads: int | None = None) -> Fidelity:
    """Run the sim and onnxruntime (integer kernels) on the same batches and compare outputs."""
    runtime = session(qdq_path, threads=threads)
    agree, count, worst = 0, 0, 0.0
    device = next(iter(sim.parameters()), torch.empty(0)).device if hasattr(sim, "parameters") else "cpu"
    with torch.no_grad():
        for args, kwargs in progress(checked_calls(data, transform, num_batches), "fidelity"):
            item = kwargs if kwargs else args
            simulated = sim(*[a.to(device) for a in args], **{k: v.to(device) for k, v in kwargs.items()})
            simulated = _first_tensor(simulated).float().cpu().numpy()
            executed = run(runtime, item)[0]
            worst = max(worst, float(np.abs(simulated - executed).max()))
            flat_sim = simulated.reshape(simulated.shape[0], -1)
            flat_run = executed.reshape(executed.shape[0], -1)
            agree += int((flat_sim.argmax(1) == flat_run.argmax(1)).sum())
            count += flat_sim.shape[0]
    lsb = output_lsb(sim)
    return Fidelity(count, agree / max(count, 1), worst, worst / lsb if lsb == lsb else float("nan"))


def _first_tensor(result) -> torch.Tensor:
    """The first tensor of a model's output (tensor, tuple, list or dict)."""
    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, np.ndarray):
        return torch.from_numpy(result)
    if isinstance(result, dict):
        return next(iter(result.values()))
    return _first_tensor(result[0])
