"""Run exported models in onnxruntime (CPU), the runtime whose results the simulation must predict."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from lowbit.data import as_call


def session(path, threads: int | None = None, optimize: bool = True, memory_pattern: bool = True,
            spinning: bool = True) -> ort.InferenceSession:
    """A CPU InferenceSession for ``path`` or serialized model bytes (all graph optimisations on unless
    ``optimize=False``; ``memory_pattern=False`` skips planning buffers from the first runs' shapes;
    ``spinning=False``: its threads sleep after a run instead of busy-waiting for the next one, which takes the
    cores from whatever runs in between)."""
    options = ort.SessionOptions()
    options.enable_mem_pattern = memory_pattern
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def feeds(runtime: ort.InferenceSession, item) -> dict[str, np.ndarray]:
    """Model input (tensors or arrays: single, tuple or dict) as onnxruntime feeds, matched by position or name."""
    args, kwargs = as_call(item)
    names = [i.name for i in runtime.get_inputs()]
    arrays = (torch.Tensor, np.ndarray)
    values = {name: _array(a) for name, a in zip(names, [a for a in args if isinstance(a, arrays)])}
    values.update({name: _array(v) for name, v in kwargs.items() if name in names and isinstance(v, arrays)})
    return values


def _array(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def run(runtime: ort.InferenceSession, item) -> list[np.ndarray]:
    """All outputs of one run on ``item``."""
    return runtime.run(None, feeds(runtime, item))
