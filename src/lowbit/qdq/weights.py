"""Integer weights and int32 biases in a QDQ graph, computed exactly as the simulation rounds them."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from lowbit.qdq.graph_index import GraphIndex, dequantizer_through
from lowbit.qdq.storage import onnx_storage
from lowbit.target import PASSTHROUGH_OPS
from lowbit.quant.encoding import Encoding
from lowbit.quant.fake_quant import fake_quantize, quantize
from lowbit.quant.int32_bias import int32_bias
from lowbit.quant.layout import broadcastable


def stored_integers(weight: np.ndarray, encoding: Encoding, type_name: str) -> np.ndarray:
    """The integers an ONNX DequantizeLinear with ``encoding``'s zero point reads back as the sim's values."""
    grid = quantize(torch.from_numpy(weight.copy()), encoding)
    if type_name.startswith("int"):
        grid = grid + broadcastable(encoding.offset, grid, encoding.spec)
    return grid.numpy().astype(type_name)


def quantize_weights(graph: onnx.GraphProto, params: dict[str, Encoding]) -> None:
    """Replace Q(float weight) by an integer initializer read by the DQ (per-block: by float values)."""
    index = GraphIndex(graph)
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in params:
            continue
        name, encoding = node.input[0], params[node.input[0]]
        weight = numpy_helper.to_array(index.initializers[name]).astype(np.float32)
        (dequantize,) = index.consumers[node.output[0]]
        if encoding.spec.block_size is not None:
            values = fake_quantize(torch.from_numpy(weight.copy()), encoding).numpy()
            graph.initializer.append(numpy_helper.from_array(values, f"{name}_fake_quantized"))
            _redirect(graph, dequantize.output[0], f"{name}_fake_quantized")
            graph.node.remove(dequantize)
        else:
            type_name, _ = onnx_storage(encoding)
            integers = stored_integers(weight, encoding, type_name)
            graph.initializer.append(numpy_helper.from_array(integers, f"{name}_quantized"))
            dequantize.input[0] = f"{name}_quantized"
        graph.node.remove(node)


def fold_transposed_weights(graph: onnx.GraphProto) -> None:
    """DQ(integer weight) → Transpose becomes DQ(transposed integer weight), so MatMul sees a DQ."""
    index = GraphIndex(graph)
    for node in list(graph.node):
        if node.op_type != "Transpose":
            continue
        dequantize = index.producer.get(node.input[0])
        if (dequantize is None or dequantize.op_type != "DequantizeLinear"
                or dequantize.input[0] not in index.initializers or len(index.consumers[dequantize.output[0]]) != 1):
            continue
        perm = [a.ints for a in node.attribute if a.name == "perm"]
        stored = numpy_helper.to_array(index.initializers[dequantize.input[0]])
        order = list(perm[0]) if perm else list(reversed(range(stored.ndim)))
        transposed = numpy_helper.from_array(np.ascontiguousarray(stored.transpose(order)),
                                             dequantize.input[0] + "_transposed")
        graph.initializer.append(transposed)
        dequantize.input[0] = transposed.name
        for attribute in dequantize.attribute:
            if attribute.name == "axis":
                attribute.i = order.index(attribute.i % stored.ndim)
        _redirect(graph, node.output[0], dequantize.output[0])
        graph.node.remove(node)


def quantize_biases(graph: onnx.GraphProto) -> None:
    """Float bias of Conv/Gemm with quantized input and weight → int32 with scale s_in · s_w (widened
    where it would overflow: :mod:`lowbit.quant.int32_bias`)."""
    index, quantized = GraphIndex(graph), set()
    for node in list(graph.node):
        if node.op_type not in ("Conv", "Gemm", "ConvTranspose") or len(node.input) < 3:
            continue
        dequantizers = [dequantizer_through(index, name, PASSTHROUGH_OPS)[0] for name in node.input[:2]]
        scales = [index.constant(dq.input[1]) if dq is not None else None for dq in dequantizers]
        bias = index.constant(node.input[2])
        if any(s is None for s in scales) or bias is None or scales[0].size != 1:
            continue
        wide = any(dq.domain == "com.microsoft" for dq in dequantizers)  # 16-bit pairs
        grid, scale = int32_bias(torch.tensor(bias, dtype=torch.float32), torch.tensor(scales[0]),
                                 torch.tensor(scales[1].reshape(-1)), widen=wide)
        # through float64: float32(2**31 - 1) is 2**31, which wraps to -2**31 as int32 (dead channels)
        integers = grid.double().clamp(-2**31, 2**31 - 1).numpy().astype(np.int32)
        name = node.input[2] if node.input[2] not in quantized else f"{node.input[2]}_{node.name}"  # shared bias
        quantized.add(name)
        graph.initializer.extend([
            numpy_helper.from_array(integers, f"{name}_quantized"),
            numpy_helper.from_array(scale.contiguous().numpy(), f"{name}_scale"),
            numpy_helper.from_array(np.zeros_like(integers), f"{name}_zero_point")])
        graph.node.append(helper.make_node(
            "DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
            [f"{name}_dequantized"], axis=0))
        node.input[2] = f"{name}_dequantized"
    _sort_topologically(graph)


def _redirect(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every reader of tensor ``old`` reads ``new`` instead (graph outputs keep their name via Identity)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    if any(o.name == old for o in graph.output):
        graph.node.append(helper.make_node("Identity", [new], [old]))


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Order nodes so every input is produced before it is read."""
    available = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            ordered.extend(pending)
            break
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)
