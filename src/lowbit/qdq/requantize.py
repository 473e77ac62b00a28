"""A QuantizeLinear/DequantizeLinear pair on its input's own grid right before a convolution or dense layer that reads
its input through a MaxPool: onnxruntime fuses DequantizeLinear → Conv into its integer kernel only where nothing
stands between them, and runs the Conv in float otherwise, which neither the sims' integer emulation nor LiteRT do.
The values are already on that grid (a max of grid values; zero padding), so the pair changes nothing but the
kernel onnxruntime picks."""

from __future__ import annotations

import onnx
from onnx import helper

from lowbit.qdq.graph_index import GraphIndex, dequantizer_through

CHAIN_OPS = ("Pad", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")
KERNEL_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def requantize_after_pools(graph: onnx.GraphProto) -> None:
    """Insert the pair before each integer-kernel op whose input comes from a DequantizeLinear through a chain of
    data-movement ops with a MaxPool in it (in place; nodes appended, the caller sorts them)."""
    index = GraphIndex(graph)
    pairs: dict[str, str] = {}
    for node in list(graph.node):
        if node.op_type not in KERNEL_OPS or not node.input:
            continue
        source = node.input[0]
        if source not in pairs:
            dequantize = _dequantize_through_pool(index, source)
            if dequantize is None:
                continue
            grid = list(dequantize.input[1:3])
            quantized, restored = f"{source}_lowbit_requantized", f"{source}_lowbit_restored"
            domain = dequantize.domain  # com.microsoft for 16-bit grids below opset 21
            graph.node.extend([helper.make_node("QuantizeLinear", [source, *grid], [quantized], domain=domain),
                               helper.make_node("DequantizeLinear", [quantized, *grid], [restored], domain=domain)])
            pairs[source] = restored
        node.input[0] = pairs[source]


def _dequantize_through_pool(index: GraphIndex, name: str) -> onnx.NodeProto | None:
    """The per-tensor DequantizeLinear ``name`` comes from through CHAIN_OPS including a MaxPool, else None."""
    dequantize, passed = dequantizer_through(index, name, CHAIN_OPS)
    if dequantize is None or "MaxPool" not in passed:
        return None
    scale = index.constant(dequantize.input[1])
    return dequantize if scale is not None and scale.size == 1 else None
