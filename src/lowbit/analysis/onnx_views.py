"""The report's per-layer views for an ONNX sim: weight ranges read from the initializers, activation
histograms from the float graph and quantized values from the QDQ graph, both run in onnxruntime."""

from __future__ import annotations

import onnx
import torch
from onnx import helper, numpy_helper

from lowbit.analysis.observe import SAMPLES, ActivationView, activation_view, channel_ranges, first_samples
from lowbit.quant.fake_quant import fake_quantize
from lowbit.runtime import session


def onnx_weight_ranges(sim, groups) -> dict[str, tuple[list[float], list[float]]]:
    """Per layer with a weight: each output channel's (min, max), on the quantizer's channel axis."""
    initializers = {t.name: t for t in sim.model.graph.initializer}
    ranges = {}
    for group in groups:
        if not group.weights:
            continue
        point = sim.point(group.weights[0])
        weight = torch.from_numpy(numpy_helper.to_array(initializers[point.module]).astype("float32"))
        ranges[group.name] = channel_ranges(weight, point.spec)
    return ranges


def onnx_activation_views(sim, call, groups) -> dict[str, ActivationView]:
    """Per layer with an activation quantizer, the view of its last one on ``call``'s first samples:
    the float graph's values there, and the QDQ graph's values there quantized by its encoding."""
    keys = {group.activations[-1]: group.name for group in groups if group.activations}
    tensors = {key: sim.point(key).tensor for key in keys}
    feeds = sim.inputs.feeds(*first_samples(call, SAMPLES))
    split = sim.split()
    floats = graph_values(split.float_model, sorted(set(tensors.values())), feeds, sim.threads)
    quantized = graph_values(split.qdq_model, sorted(set(tensors.values())), feeds, sim.threads)
    quantizers = sim.quantizers()
    views = {}
    for key, name in keys.items():
        encoding, read = quantizers[key].encoding, quantized[tensors[key]]
        on_grid = fake_quantize(read, encoding) if quantizers[key].mode == "quantize" else read
        views[name] = activation_view(key, floats[tensors[key]], on_grid, encoding)
    return views


def graph_values(model: onnx.ModelProto, names: list[str], feeds: dict, threads) -> dict[str, torch.Tensor]:
    """The named tensors of one onnxruntime run of ``model`` on ``feeds`` (made graph outputs)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    runtime = session(exposed.SerializeToString(), threads=threads)
    return {name: torch.from_numpy(value).float() for name, value in zip(names, runtime.run(names, feeds))}
