"""Observe intermediate tensors of an ONNX graph in onnxruntime: per-sample extremes are reduced in the graph (keeping
the NCHWc layout), other tensors become outputs, in as few passes as a memory budget allows."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from lowbit.onnx.nonnegative import nonnegative_tensors
from lowbit.quant.range_estimators import RangeEstimator
from lowbit.runtime import session

DEFAULT_BUDGET_BYTES = 2 << 30
"""Bytes of exposed tensors one batch may produce before the tensors are split over several passes."""

SLICE_BYTES = 40 << 20
"""Image batches are run in slices whose largest intermediate tensor stays near this many bytes: the same
per-sample values, a lower peak memory, and no slow first batch while onnxruntime's memory arena grows."""

_MIN, _MAX = "_lowbit_sample_min", "_lowbit_sample_max"


def observe(model: onnx.ModelProto, estimators: dict[str, list[RangeEstimator]], feeds: list[dict],
            threads: int | None, progress=lambda it, total: it) -> None:
    """Feed every batch of ``feeds`` to the estimators of each named tensor."""
    ranks = tensor_ranks(model)
    reduced = [n for n, group in estimators.items()
               if ranks.get(n, 0) >= 2 and all(e.takes_extremes and e.spec.axis is None for e in group)]
    exposed = [n for n in estimators if n not in reduced]
    nonnegative = nonnegative_tensors(model) & set(reduced)
    batch = max((next(iter(f.values())).shape[0] for f in feeds if f), default=1)
    sized = sized_for(model, feeds[0]) if feeds else model
    groups = tensor_groups(sized, exposed, batch, DEFAULT_BUDGET_BYTES) or [[]]
    rows = slice_rows(sized)
    for index, group in enumerate(groups):
        first = index == 0  # the reductions ride along with the first pass
        graph_model = with_outputs(model, group, reduced if first else [], ranks, nonnegative)
        names = [output.name for output in graph_model.graph.output]
        if not names:
            continue
        # planning buffers for a graph with this many live outputs costs more than one pass (ad-hoc timing)
        runtime = session(graph_model.SerializeToString(), threads=threads, memory_pattern=False)
        for feed in progress(feeds, len(feeds)):
            values = dict(zip(names, run_in_slices(runtime, names, feed, rows)))
            for name in group:
                tensor = torch.from_numpy(values[name])
                for estimator in estimators[name]:
                    estimator.observe(tensor)
            for name in reduced if first else []:
                hi = torch.from_numpy(values[f"{name}{_MAX}"]).reshape(1, -1)
                lo = (torch.zeros_like(hi) if name in nonnegative
                      else torch.from_numpy(values[f"{name}{_MIN}"]).reshape(1, -1))
                for estimator in estimators[name]:
                    estimator.observe_extremes(lo, hi)


def slice_rows(model: onnx.ModelProto, feed: dict[str, np.ndarray] | None = None) -> int:
    """Samples per run that keep ``model``'s largest intermediate tensor near ``SLICE_BYTES`` (sized for
    ``feed``'s shapes where the model's are dynamic)."""
    sized = sized_for(model, feed) if feed else model
    return max(1, SLICE_BYTES // max(_bytes_per_sample(sized).values(), default=1))


def sized_for(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` itself when its inputs' non-batch dimensions are static, else a copy with them set from
    ``feed``'s arrays and shapes inferred again (a dynamic H x W is sized as the data's)."""
    dynamic = [value for value in model.graph.input if value.name in feed
               and any(not (d.HasField("dim_value") and d.dim_value > 0) for d in value.type.tensor_type.shape.dim[1:])]
    if not dynamic:
        return model
    sized = copy.deepcopy(model)
    del sized.graph.value_info[:]
    for value in sized.graph.input:
        array = feed.get(value.name)
        dims = value.type.tensor_type.shape.dim
        if array is None or len(dims) != array.ndim:
            continue
        for dim, size in list(zip(dims, array.shape))[1:]:
            dim.Clear()
            dim.dim_value = size
    try:
        return onnx.shape_inference.infer_shapes(sized, data_prop=True)
    except onnx.shape_inference.InferenceError:
        return model


def run_in_slices(runtime, names: list[str], feed: dict[str, np.ndarray], rows: int) -> list[np.ndarray]:
    """``runtime.run(names, feed)``, in slices of ``rows`` samples when every input is an image batch
    (4-D, one batch size; other inputs may not be batch-first), outputs joined along the first axis."""
    sizes = {value.shape[0] if value.ndim == 4 else -1 for value in feed.values()}
    size = sizes.pop() if len(sizes) == 1 else -1
    if size <= rows:
        return runtime.run(names, feed)
    parts = [runtime.run(names, {name: value[first:first + rows] for name, value in feed.items()})
             for first in range(0, size, rows)]
    return [np.concatenate(outputs) for outputs in zip(*parts)]


def with_outputs(model: onnx.ModelProto, exposed: list[str], reduced: list[str], ranks: dict[str, int],
                 nonnegative: set[str] = frozenset()) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are the ``exposed`` tensors and, for each ``reduced`` tensor,
    its per-sample maximum and, unless it is ``nonnegative``, minimum (over every axis but the first)."""
    result = copy.deepcopy(model)
    graph = result.graph
    known = {v.name: v for v in _values(model)}
    del graph.output[:]
    graph.output.extend(known[n] if n in known else helper.make_empty_tensor_value_info(n) for n in exposed)
    for name in reduced:
        if name not in nonnegative:
            add_reduction(result, "ReduceMin", name, list(range(1, ranks[name])), name + _MIN)
        if ranks[name] == 4:
            graph.node.append(helper.make_node("GlobalMaxPool", [name], [name + _MAX + "_per_channel"]))
            add_reduction(result, "ReduceMax", name + _MAX + "_per_channel", [1, 2, 3], name + _MAX)
        else:
            add_reduction(result, "ReduceMax", name, list(range(1, ranks[name])), name + _MAX)
    return result


def add_reduction(model: onnx.ModelProto, op_type: str, tensor: str, axes: list[int], output: str) -> None:
    """Append (in place) a Reduce* node of ``tensor`` over ``axes`` (no kept dims) as graph output ``output``."""
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    if opset >= (13 if op_type == "ReduceSum" else 18):  # the opsets that moved axes to an input
        graph.initializer.append(numpy_helper.from_array(np.array(axes, dtype=np.int64), output + "_axes"))
        graph.node.append(helper.make_node(op_type, [tensor, output + "_axes"], [output], keepdims=0))
    else:
        graph.node.append(helper.make_node(op_type, [tensor], [output], axes=axes, keepdims=0))
    graph.output.append(helper.make_empty_tensor_value_info(output))


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


def _values(model: onnx.ModelProto):
    return [*model.graph.input, *model.graph.value_info, *model.graph.output]


def tensor_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of each tensor with a known shape."""
    return {v.name: len(v.type.tensor_type.shape.dim) for v in _values(model) if v.type.tensor_type.HasField("shape")}


def _bytes_per_sample(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of one sample of each tensor with a known shape (the first dimension taken as batch)."""
    sizes = {}
    for value in _values(model):
        tensor_type = value.type.tensor_type
        count = math.prod(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                          for d in tensor_type.shape.dim[1:])
        itemsize = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).itemsize if tensor_type.elem_type else 4
        sizes[value.name] = count * itemsize
    return sizes
