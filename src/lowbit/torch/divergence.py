"""Where a PyTorch sim and onnxruntime part: the first quantizer, in graph order, whose values in the
sim differ by more than one step from the integers onnxruntime computes for it in the exported file."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper

from lowbit.data import as_call
from lowbit.qdq.graph_index import GraphIndex
from lowbit.runtime import run, session


def first_divergence(sim, qdq_path, batch, tolerance_steps: float = 1.0) -> str | None:
    """``KEY (tensor NAME): N steps`` for the first activation quantizer whose sim values differ from
    onnxruntime's by more than ``tolerance_steps`` grid steps on ``batch``; None when none does."""
    model = onnx.load(str(qdq_path))
    integers = _quantized_tensors(model, sim.tensor_names)
    if not integers:
        return None
    for output, elem_type, _ in integers.values():
        model.graph.output.append(helper.make_tensor_value_info(output, elem_type, None))
    runtime = session(model.SerializeToString())
    count = len(runtime.get_outputs()) - len(integers)
    values = dict(zip(integers, run(runtime, batch)[count:]))
    captured = _sim_values(sim, batch)
    for point in sim.points:
        if point.role == "weight" or point.key not in captured or sim.tensor_names.get(point.key) not in values:
            continue
        scale = sim.quantizers()[point.key].encoding.scale.reshape(-1)[0].item()
        ours = captured[point.key].astype(np.float64) / scale
        source = sim.tensor_names[point.key]
        theirs = values[source].astype(np.float64) - integers[source][2]
        if ours.shape != theirs.shape:
            continue
        steps = float(np.abs(ours - theirs).max()) if ours.size else 0.0
        if steps > tolerance_steps + 1e-3:
            return f"{point.key} (tensor {source}): {steps:.0f} steps"
    return None


def _quantized_tensors(model: onnx.ModelProto, names: dict[str, str]) -> dict[str, tuple[str, int, float]]:
    """For each quantized activation: its QuantizeLinear's output, that output's type and zero point."""
    sources = set(names.values())
    index = GraphIndex(model.graph)
    result = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in sources and node.input[0] not in index.initializers:
            zero = index.constant(node.input[2]) if len(node.input) > 2 else None
            elem_type = helper.np_dtype_to_tensor_dtype(zero.dtype) if zero is not None else onnx.TensorProto.UINT8
            result[node.input[0]] = (node.output[0], elem_type, float(zero.reshape(-1)[0]) if zero is not None else 0.0)
    return result


def _sim_values(sim, batch) -> dict[str, np.ndarray]:
    """Every activation quantizer's output on ``batch``, by key."""
    captured, handles = {}, []
    for key, quantizer in sim.quantizers().items():
        if sim.point(key).role != "weight":
            def hook(module, inputs, output, key=key):
                captured.setdefault(key, output.detach().float().cpu().numpy())
            handles.append(quantizer.register_forward_hook(hook))
    try:
        args, kwargs = as_call(batch)
        with torch.no_grad():
            sim(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return captured
