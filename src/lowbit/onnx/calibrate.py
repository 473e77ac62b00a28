"""Observe intermediate tensors of an ONNX graph by running it in onnxruntime with them exposed as
outputs, in as few passes over the data as a memory budget allows."""

from __future__ import annotations

import onnx
import torch
from onnx import helper

from lowbit.runtime import session

DEFAULT_BUDGET_BYTES = 2 << 30
"""Bytes of exposed tensors one batch may produce before the tensors are split over several passes."""


def exposed_model(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``names`` (graph outputs stay outputs only if listed)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    known = {v.name: v for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    del result.graph.output[:]
    result.graph.output.extend(known[n] if n in known else helper.make_empty_tensor_value_info(n) for n in names)
    return result


def tensor_groups(model: onnx.ModelProto, names: list[str], batch: int, budget: int) -> list[list[str]]:
    """``names`` split into consecutive groups whose tensors of one ``batch`` fit ``budget`` bytes."""
    sizes = _bytes_per_sample(model)
    groups, current, used = [], [], 0
    for name in names:
        size = sizes.get(name, 0) * batch
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return groups + [current] if current else groups


def observe(model: onnx.ModelProto, observers: dict[str, callable], feeds: list[dict], threads: int | None,
            budget: int = DEFAULT_BUDGET_BYTES, progress=lambda it, total: it) -> None:
    """Call ``observers[name](tensor)`` for each exposed tensor of every batch of ``feeds``."""
    names = list(observers)
    batch = max((next(iter(f.values())).shape[0] for f in feeds if f), default=1)
    for group in tensor_groups(model, names, batch, budget):
        runtime = session(exposed_model(model, group).SerializeToString(), threads=threads)
        for feed in progress(feeds, len(feeds)):
            for name, value in zip(group, runtime.run(group, feed)):
                observers[name](torch.from_numpy(value))


def _bytes_per_sample(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of one sample of each tensor with a known shape (the first dimension taken as batch)."""
    sizes = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim]
        count = 1
        for dim in dims[1:]:
            count *= dim
        itemsize = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).itemsize \
            if value.type.tensor_type.elem_type else 4
        sizes[value.name] = count * itemsize
    return sizes
