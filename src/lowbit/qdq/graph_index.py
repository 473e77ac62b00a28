"""Look-ups on an ONNX graph: producers, consumers, constant values, renames and clean-up."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The tensor names ``node`` reads: its inputs, and the outer-scope names its subgraphs (If, Loop,
    Scan bodies) read, at any depth."""
    names = list(node.input)
    for attribute in node.attribute:
        for graph in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else
                      attribute.graphs if attribute.type == onnx.AttributeProto.GRAPHS else []):
            for inner in graph.node:
                names.extend(node_reads(inner))
    return names


class GraphIndex:
    """Producers, consumers, initializers and Constant values of one ONNX graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node_reads(node):
                self.consumers.setdefault(name, []).append(node)

    def constant(self, name: str) -> np.ndarray | None:
        """Value of an initializer or Constant-node output, else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t)
        return None


def dequantizer_through(index: GraphIndex, name: str, op_types) -> tuple[onnx.NodeProto | None, list[str]]:
    """The DequantizeLinear that produces ``name`` through ops of ``op_types`` (None where another op does), and the
    op types passed on the way."""
    node, passed = index.producer.get(name), []
    while node is not None and node.op_type in op_types:
        passed.append(node.op_type)
        node = index.producer.get(node.input[0])
    return (node if node is not None and node.op_type == "DequantizeLinear" else None), passed


def rename_tensors(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename initializers and Constant outputs (and every reference to them) in place."""
    if not renames:  # an ONNX sim's split passes none: no walk over the graph
        return
    for tensor in graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
    for value in graph.input:
        value.name = renames.get(value.name, value.name)


def remove_unused(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads, then initializers nobody reads (repeat until stable)."""
    while True:
        used = {name for node in graph.node for name in node_reads(node)} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(out in used for out in n.output)]
        for node in dead:
            graph.node.remove(node)
        if not dead:
            break
    used = {name for node in graph.node for name in node_reads(node)}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)


def strip_attribute(node: onnx.NodeProto, name: str) -> str | None:
    """Remove attribute ``name`` from ``node``; return its string value (None if absent)."""
    for attribute in list(node.attribute):
        if attribute.name == name:
            node.attribute.remove(attribute)
            return attribute.s.decode()
    return None
