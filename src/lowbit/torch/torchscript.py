"""TorchScript export of a calibrated sim: a file ``torch.jit.load`` runs without lowbit, computing the sim's bits."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from lowbit.atomic import atomic_write_bytes
from lowbit.data import as_call, move_call
from lowbit.errors import ExportError, first_line
from lowbit.qdq.files import require_encodings
from lowbit.torch.eval_mode import eval_mode


def export_torchscript(sim, path) -> Path:
    """Trace ``sim`` (eval mode, encodings as constants) at twice its example's batch, freeze it without
    numeric rewrites, check it against the sim at the example's own batch, and write it atomically."""
    require_encodings(sim.quantizers())
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: folder {path.parent} does not exist")
    args, kwargs = move_call(*as_call(sim.example_input), sim._device())
    with eval_mode(sim), torch.no_grad():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(sim.model, _doubled(args), example_kwarg_inputs=_doubled(kwargs) or None,
                                         check_trace=False, strict=False)
                frozen = torch.jit.freeze(traced.eval(), optimize_numerics=False)
        except Exception as error:
            raise ExportError(f"TorchScript cannot trace {type(sim.model).__name__}: {first_line(error)}") from error
        for call in ((args, kwargs), (_doubled(args), _doubled(kwargs))):
            _check_same(frozen(*call[0], **call[1]), sim.model(*call[0], **call[1]), _batch(call))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript; libtorch loads it
        torch.jit.save(frozen, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _doubled(inputs):
    """Every tensor with a batch axis repeated twice along it (so the trace cannot bake the batch size in)."""
    def double(value):
        return torch.cat([value, value]) if isinstance(value, torch.Tensor) and value.dim() > 0 else value
    if isinstance(inputs, dict):
        return {name: double(value) for name, value in inputs.items()}
    return tuple(double(value) for value in inputs)


def _batch(call) -> int:
    tensors = [v for v in (*call[0], *call[1].values()) if isinstance(v, torch.Tensor) and v.dim() > 0]
    return tensors[0].shape[0] if tensors else 1


def _check_same(scripted, simulated, batch: int) -> None:
    """ExportError unless the TorchScript outputs equal the sim's bit for bit."""
    got, want = _flat(scripted), _flat(simulated)
    if len(got) != len(want) or any(g.shape != w.shape or not torch.equal(g, w) for g, w in zip(got, want)):
        raise ExportError(f"the TorchScript trace computes differently from the sim at batch {batch}: the "
                          f"model's forward takes a path that depends on its input (data-dependent control flow)")


def _flat(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in _flat(value)]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in _flat(value)]
    return []
