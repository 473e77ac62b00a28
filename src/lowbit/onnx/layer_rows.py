"""Rows of one ONNX layer for the per-layer techniques: its input as the QDQ graph computes it and its float output,
sampled as input patches by ``lowbit.algorithms.layer_rows`` on a torch layer built from the node's attributes."""

from __future__ import annotations

import math

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.algorithms.layer_rows import sample_rows
from lowbit.algorithms.row_cache import RowCache
from lowbit.graph.blocks import Block
from lowbit.onnx.attributes import attribute, clip_bounds
from lowbit.onnx.layers import WeightedLayer
from lowbit.onnx.graph_view import GraphFacts
from lowbit.progress import progress
from lowbit.runtime import session


def row_layer(layer: WeightedLayer) -> nn.Module:
    """A bias-free torch layer with ``layer``'s geometry and no padding (see :func:`padded`)."""
    weight = layer.weight
    if layer.node.op_type != "Conv":
        return nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    kernel = tuple(weight.shape[2:])
    conv = nn.Conv1d if len(kernel) == 1 else nn.Conv2d
    return conv(layer.in_channels, weight.shape[0], kernel, stride=tuple(attribute(layer.node, "strides", [1] * len(kernel))),
                dilation=tuple(attribute(layer.node, "dilations", [1] * len(kernel))), groups=layer.groups, bias=False)


def rows_unsupported(layer: WeightedLayer) -> str | None:
    """Why ``layer`` cannot be handled as rows (3-D convolutions), or None."""
    if layer.node.op_type == "Conv" and layer.weight.dim() not in (3, 4):
        return f"{layer.weight.dim() - 2}-D convolution"
    return None


def padded(node: onnx.NodeProto, kernel: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    """``x`` zero-padded as the Conv ``node`` pads it (``pads``, or ``auto_pad`` SAME_UPPER / SAME_LOWER from the
    input size); Gemm and MatMul inputs unchanged."""
    if node.op_type != "Conv":
        return x
    rank = len(kernel)
    auto_pad = attribute(node, "auto_pad", b"NOTSET").decode()  # a string attribute's value is bytes
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        strides = attribute(node, "strides", [1] * rank)
        dilations = attribute(node, "dilations", [1] * rank)
        begins, ends = [], []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        return x
    else:
        pads = attribute(node, "pads", [0] * 2 * rank)
        begins, ends = pads[:rank], pads[rank:]
    flat = [p for axis in reversed(range(rank)) for p in (begins[axis], ends[axis])]
    return F.pad(x, flat) if any(flat) else x


def following_activation(facts: GraphFacts, layer: WeightedLayer):
    """The Relu or constant Clip that alone reads the layer's output (fused into it on export), as a
    torch function; identity otherwise."""
    readers = facts.consumers.get(layer.node.output[0], [])
    if len(readers) != 1 or layer.node.output[0] in facts.graph_outputs:
        return nn.Identity()
    reader = readers[0]
    if reader.op_type == "Relu":
        return torch.relu
    if reader.op_type == "Clip":
        low, high = clip_bounds(facts.initializers, reader)
        if not (math.isnan(low) or math.isnan(high)):
            return lambda t: t.clamp(low, high)
    return nn.Identity()


class LayerRows:
    """Collects rows of each layer of ``sim`` over ``feeds``: quantized inputs from the sim's current
    QDQ graph, float outputs from ``reference`` (the float model as it was before any layer changed)."""

    def __init__(self, sim, feeds: list[dict], reference: onnx.ModelProto):
        self.sim = sim
        self.feeds = feeds
        self.reference = reference

    def collect(self, layer: WeightedLayer, max_rows: int, memory_limit: int, generator: torch.Generator,
                description: str) -> RowCache:
        """Up to ``max_rows`` rows (input patch, float output) sampled evenly over the batches."""
        qdq = self.sim.split().qdq_model
        reader = next(node for node in qdq.graph.node if node.name == layer.name)
        quantized = _exposing(qdq, reader.input[0], self.sim.threads)
        reference = _exposing(self.reference, layer.node.output[0], self.sim.threads)
        torch_layer = row_layer(layer)
        cache = None
        for feed in progress(self.feeds, f"{description} {layer.name}", len(self.feeds)):
            x = padded(layer.node, tuple(layer.weight.shape[2:]), torch.from_numpy(quantized.run(None, feed)[0]))
            y = torch.from_numpy(reference.run(None, feed)[0])
            if cache is None:
                channel_axis = 1 if layer.node.op_type == "Conv" else -1
                positions = y.numel() // y.shape[channel_axis]
                per_batch = min(positions, math.ceil(max_rows / len(self.feeds)))
                probe, _ = sample_rows(torch_layer, x[:1], y[:1], 1, generator)
                cache = RowCache(per_batch * len(self.feeds), tuple(probe.shape[1:]), (layer.weight.shape[0],),
                                 memory_limit)
            cache.append(*sample_rows(torch_layer, x, y, per_batch, generator))
        return cache

    def collect_block(self, block: Block, memory_limit: int, description: str) -> RowCache:
        """Every sample's block input as the sim computes it (its quantizers not yet applied) and float output."""
        graph_inputs = {value.name for value in self.sim.model.graph.input}
        quantized = None if block.input in graph_inputs else _exposing(self.sim.split().qdq_model, block.input,
                                                                        self.sim.threads)
        reference = _exposing(self.reference, block.output, self.sim.threads)
        cache = None
        for feed in progress(self.feeds, f"{description} {block.layers[0]}…", len(self.feeds)):
            x = torch.from_numpy(feed[block.input] if quantized is None else quantized.run(None, feed)[0])
            y = torch.from_numpy(reference.run(None, feed)[0])
            if cache is None:
                cache = RowCache(x.shape[0] * len(self.feeds), tuple(x.shape[1:]), tuple(y.shape[1:]), memory_limit)
            cache.append(x, y)
        return cache


def _exposing(model: onnx.ModelProto, tensor: str, threads: int | None):
    """An onnxruntime session of ``model`` whose only output is ``tensor``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    return session(probe.SerializeToString(), threads=threads)
