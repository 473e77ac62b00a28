"""An ONNX graph's facts (initializers, producers, consumers, constants) and the graph as a
``lowbit.graph`` view."""

from __future__ import annotations

from collections import Counter

import onnx

from lowbit.graph.placement import CARRIES_INPUT
from lowbit.graph.view import GraphView, Layer, Op
from lowbit.onnx.attributes import attribute, clip_bounds
from lowbit.qdq.graph_index import GraphIndex, node_reads
from lowbit.target.vocabulary import QUANTIZED_OP_TYPES

WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "Gather": 0}
"""Which input of each weighted op type holds its weight (when it is an initializer)."""

_SHAPE_ONLY = frozenset({"Shape", "Size", "ConstantOfShape", "Range", "EyeLike"})
"""Ops whose values depend on their inputs' shapes only: constants for quantization purposes."""
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def weight_axis(node: onnx.NodeProto, weight: onnx.TensorProto) -> int | None:
    """Output-channel axis of ``node``'s weight: Conv 0, ConvTranspose 1, Gemm 0 with transB else 1,
    MatMul the last axis of a 2-D weight (None: no per-channel axis, as for an embedding table)."""
    if node.op_type == "Gemm":
        return 0 if attribute(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return 1 if len(weight.dims) == 2 else None
    return {"Conv": 0, "ConvTranspose": 1, "Gather": None}[node.op_type]


class GraphFacts(GraphIndex):
    """Per-tensor facts of a graph: element type, producer, consumers, and which tensors are constants
    (initializers and what is computed from them or from shapes alone)."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        super().__init__(graph)
        self.elem_type = {v.name: v.type.tensor_type.elem_type
                          for v in [*graph.input, *graph.value_info, *graph.output]}
        self.elem_type.update({t.name: t.data_type for t in graph.initializer})
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in graph.output]
        self.static = set(self.initializers)
        for node in graph.node:
            if node.op_type in _SHAPE_ONLY or all(not i or i in self.static for i in node.input):
                self.static.update(node.output)

    def is_float(self, name: str) -> bool:
        return self.elem_type.get(name) in _FLOAT_TYPES

    def view(self, layers: dict | None = None) -> GraphView:
        """The graph as a view; ``layers`` (``WeightedLayer`` by node name) mark the layers the
        techniques can rescale."""
        ops = [self._op(node, (layers or {}).get(node.name)) for node in self.graph.node]
        return GraphView(ops, self.graph_inputs, self.graph_outputs,
                         {name for name in self.elem_type if self.is_float(name)})

    def _op(self, node: onnx.NodeProto, layer) -> Op:
        reads = tuple("" if node.op_type in _SHAPE_ONLY or i in self.static else i for i in node.input)
        fields = {"also_reads": tuple(n for n in node_reads(node) if n not in node.input)}
        weight = self._weight_initializer(node)
        if weight is not None:
            fields.update(weight=weight.name, weight_owner=weight.name, weight_axis=weight_axis(node, weight),
                          depthwise=_is_depthwise(node, weight))
        if layer is not None:
            fields["layer"] = Layer(layer.in_channels, layer.weight.shape[0], layer.groups)
        if node.op_type == "Clip":
            fields["clip"] = clip_bounds(self.initializers, node)
        return Op(node.name, node.op_type, reads, tuple(node.output), **fields)

    def _weight_initializer(self, node: onnx.NodeProto) -> onnx.TensorProto | None:
        """The float initializer holding ``node``'s weight, if it is a weighted op with one."""
        position = WEIGHT_INPUT.get(node.op_type)
        if position is None or len(node.input) <= position:
            return None
        weight = self.initializers.get(node.input[position])
        return weight if weight is not None and weight.data_type in _FLOAT_TYPES else None


def float_op_types(model: onnx.ModelProto) -> dict[str, int]:
    """Op types left in float, with how many nodes of each: nodes computing float values from data with an op type
    lowbit does not quantize (see ``lowbit.target.vocabulary``)."""
    facts = GraphFacts(model)
    return dict(Counter(node.op_type for node in facts.graph.node
                        if node.op_type not in QUANTIZED_OP_TYPES and node.op_type not in CARRIES_INPUT
                        and any(facts.is_float(o) and o not in facts.static for o in node.output)))


def _is_depthwise(node: onnx.NodeProto, weight: onnx.TensorProto) -> bool:
    """A Conv with one input and one output channel per group (weight [group, 1, ...])."""
    group = attribute(node, "group", 1)
    return (node.op_type == "Conv" and group > 1 and len(weight.dims) > 1
            and weight.dims[0] == group and weight.dims[1] == 1)
