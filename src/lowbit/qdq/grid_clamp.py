"""Activation grids narrower than their stored type: after the DequantizeLinear, a Clip to the grid's ends and a
second Q → DQ pair, so the runtime's integer kernels still read and write the 8-bit type while every value
stays on the grid the sim computes (a 4-bit activation saturates at its 16th step, not at uint8's 255th)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lowbit.qdq.graph_index import GraphIndex
from lowbit.quant.encoding import Encoding


def clamp_to_grids(graph: onnx.GraphProto, grids: dict[str, Encoding]) -> None:
    """For each DequantizeLinear output named in ``grids`` (per-tensor encodings on the CPU), insert DQ → Clip → Q → DQ
    in place; the last DQ keeps the output's name, so consumers and graph outputs are unchanged. A Clip feeding
    the first Q that the grid's ends make redundant (a ReLU6 before a 4-bit grid) is bypassed, as onnxruntime
    drops one before an 8-bit grid, so the producer still fuses into an integer kernel."""
    _bypass_redundant_clips(graph, grids)
    nodes = []
    for node in graph.node:
        nodes.append(node)
        name = node.output[0] if node.op_type == "DequantizeLinear" else None
        if name not in grids:
            continue
        encoding = grids[name]
        wide, clipped, requantized = f"{name}_lowbit_wide", f"{name}_lowbit_clipped", f"{name}_lowbit_requantized"
        low, high = f"{name}_lowbit_grid_min", f"{name}_lowbit_grid_max"
        graph.initializer.extend([_scalar(encoding.min, low), _scalar(encoding.max, high)])
        node.output[0] = wide
        scale, zero_point = node.input[1], node.input[2]
        nodes.extend([
            helper.make_node("Clip", [wide, low, high], [clipped]),
            helper.make_node("QuantizeLinear", [clipped, scale, zero_point], [requantized], domain=node.domain),
            helper.make_node("DequantizeLinear", [requantized, scale, zero_point], [name], domain=node.domain),
        ])
    del graph.node[:]
    graph.node.extend(nodes)


def _bypass_redundant_clips(graph: onnx.GraphProto, grids: dict[str, Encoding]) -> None:
    """Let each grid's QuantizeLinear read past a Clip read only by it whose bounds round to the grid's ends or
    beyond: clamping to the grid then gives the same integers with or without it."""
    index = GraphIndex(graph)
    for name, encoding in grids.items():
        quantize = index.producer[index.producer[name].input[0]]
        clip = index.producer.get(quantize.input[0])
        if clip is None or clip.op_type != "Clip" or len(index.consumers[clip.output[0]]) != 1:
            continue
        bounds = [index.constant(n) if n else None for n in (list(clip.input) + ["", ""])[1:3]]
        scale = np.float32(encoding.scale.reshape(()))
        low, high = float(encoding.offset.reshape(())), float(encoding.offset.reshape(()) + encoding.spec.levels - 1)
        steps = [None if b is None else float(np.round(np.float32(b) / scale)) for b in bounds]
        if (steps[0] is None or steps[0] <= low) and (steps[1] is None or steps[1] >= high):
            quantize.input[0] = clip.input[0]
            graph.node.remove(clip)


def _scalar(value, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value.reshape(()).numpy(), dtype=np.float32), name)
