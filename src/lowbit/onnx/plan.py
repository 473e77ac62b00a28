"""Quantization plan for an ONNX graph: which tensors get a quantizer, with which spec."""

from __future__ import annotations

import onnx

from lowbit.onnx.attributes import attribute
from lowbit.qdq.graph_index import node_reads
from lowbit.target import PASSTHROUGH_OPS, Target
from lowbit.target.points import QuantPoint, activation_spec, weight_spec
from lowbit.target.vocabulary import QUANTIZED_OP_TYPES

WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "Gather": 0}
"""Which input of each weighted op type holds its weight (when it is an initializer)."""

_NO_OPS = ("Identity", "Dropout")
_SHAPE_ONLY = frozenset({"Shape", "Size", "ConstantOfShape", "Range", "EyeLike"})
"""Ops whose values depend on their inputs' shapes only: constants for quantization purposes."""
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}


def weight_axis(node: onnx.NodeProto, weight: onnx.TensorProto) -> int | None:
    """Output-channel axis of ``node``'s weight: Conv 0, ConvTranspose 1, Gemm 0 with transB else 1,
    MatMul the last axis of a 2-D weight (None: no per-channel axis, as for an embedding table)."""
    if node.op_type == "Gather":
        return None
    if node.op_type == "Gemm":
        return 0 if attribute(node, "transB", 0) else 1
    if node.op_type == "MatMul":
        return 1 if len(weight.dims) == 2 else None
    return {"Conv": 0, "ConvTranspose": 1}[node.op_type]


class GraphFacts:
    """Per-tensor facts the placement needs: element type, producer, consumers, constness, mask-likeness."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.graph = graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.elem_type = {v.name: v.type.tensor_type.elem_type
                          for v in [*graph.input, *graph.value_info, *graph.output]}
        self.elem_type.update({t.name: t.data_type for t in graph.initializer})
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node_reads(node):
                self.consumers.setdefault(name, []).append(node)
        self.graph_inputs = {i.name for i in graph.input if i.name not in self.initializers}
        self.graph_outputs = [o.name for o in graph.output]
        self.static, self.mask_like = set(self.initializers), set()
        for name in self.graph_inputs:
            if not self.is_float(name):
                self.mask_like.add(name)
        for node in graph.node:
            dynamic = [i for i in node.input if i and i not in self.static]
            if not dynamic or node.op_type in _SHAPE_ONLY:
                self.static.update(node.output)
            elif all(i in self.mask_like for i in dynamic):
                self.mask_like.update(node.output)

    def is_float(self, name: str) -> bool:
        return self.elem_type.get(name) in _FLOAT_TYPES

    def is_passthrough(self, node: onnx.NodeProto) -> bool:
        return node.op_type in PASSTHROUGH_OPS or node.op_type in ("Cast", "Expand", "Split")

    def quantizable(self, name: str) -> bool:
        """A float tensor computed from data by an op that may carry a quantizer of its own."""
        node = self.producer.get(name)
        return (node is not None and self.is_float(name) and name not in self.static
                and name not in self.mask_like and node.op_type in QUANTIZED_OP_TYPES)

    def runs_in_float(self, node: onnx.NodeProto) -> bool:
        """A node computing float values from data with an op type lowbit does not quantize."""
        return (node.op_type not in QUANTIZED_OP_TYPES and not self.is_passthrough(node)
                and any(self.is_float(o) and o not in self.static for o in node.output))

    def source(self, name: str) -> str:
        """The tensor whose values ``name`` carries, looking through pass-through ops."""
        node = self.producer.get(name)
        while node is not None and self.is_passthrough(node) and node.input:
            name = node.input[0]
            node = self.producer.get(name)
        return name

    def returned(self) -> set[str]:
        """Tensors the model returns, directly or through pass-through ops."""
        return {self.source(name) for name in self.graph_outputs} | set(self.graph_outputs)

    def sole_consumer(self, name: str, chain: list) -> onnx.NodeProto | None:
        """The only reader of ``name``, looking through Identity/Dropout (added to ``chain``)."""
        while True:
            readers = self.consumers.get(name, [])
            if len(readers) != 1 or name in self.graph_outputs:
                return None
            if readers[0].op_type not in _NO_OPS:
                return readers[0]
            chain.append(readers[0])
            name = readers[0].output[0]


def fused_tensors(facts: GraphFacts, target: Target) -> set[str]:
    """Outputs of supergroup members but the last: they get no quantizer."""
    fused = set()
    for group in target.supergroups:
        for node in facts.graph.node:
            if node.op_type != group[0]:
                continue
            chain, current = [node], node
            for op_type in group[1:]:
                follower = facts.sole_consumer(current.output[0], chain)
                if follower is None or follower.op_type != op_type:
                    break
                current = follower
                chain.append(current)
            else:
                fused.update(n.output[0] for n in chain[:-1])
    return fused


def plan_model(model: onnx.ModelProto, target: Target) -> list[QuantPoint]:
    """Quantizers for every tensor the target quantizes, in graph order (``model`` as load_model returns it)."""
    facts = GraphFacts(model)
    fused = fused_tensors(facts, target)
    points: list[QuantPoint] = []
    quantized: set[str] = set()
    weights: set[str] = set()
    default_rule = target.op("__default__")

    def add_activation(name: str, op_type: str, rule, role: str) -> None:
        if rule.activation.dtype != "int" or name in quantized:
            return
        points.append(QuantPoint(name, role, name, op_type, activation_spec(rule, target),
                                 constraints=rule.encoding_constraints))
        quantized.add(name)

    for name in facts.graph_inputs:
        if facts.is_float(name) and target.model_input_quantized:
            add_activation(name, "Input", default_rule, "input")
    for node in facts.graph.node:
        rule = target.op(node.op_type)
        if rule.input_quantized and not any(o in facts.mask_like for o in node.output):
            for index, argument in enumerate(node.input):
                if (argument and facts.is_float(argument) and argument not in facts.static
                        and argument not in facts.mask_like and facts.source(argument) not in quantized):
                    points.append(QuantPoint(f"{node.name}_input{index}", "input", node.name, node.op_type,
                                             activation_spec(rule, target), argument=argument))
        weight = _weight_initializer(facts, node)
        if weight is not None and weight.name not in weights:
            spec = weight_spec(target.weight_rule(node.op_type, _is_depthwise(node, weight)), node.op_type,
                               axis=weight_axis(node, weight))
            if spec is not None:
                weights.add(weight.name)
                points.append(QuantPoint(weight.name, "weight", node.name, node.op_type, spec, module=weight.name))
        for output in node.output:
            if output and facts.quantizable(output) and rule.output_quantized and output not in fused:
                add_activation(output, node.op_type, rule, "output")
    if target.model_output_quantized:
        for output in facts.graph_outputs:
            source = facts.source(output)
            if facts.quantizable(source) and source not in fused:
                add_activation(source, facts.producer[source].op_type, target.op(facts.producer[source].op_type),
                               "output")
    if target.model_output_float:
        returned = {facts.source(output) for output in facts.graph_outputs}
        points = [p for p in points if not (p.role == "output" and p.key in returned)]
    return points


def float_op_types(model: onnx.ModelProto) -> dict[str, int]:
    """Op types left in float (see ``lowbit.target.vocabulary``), with how many nodes of each."""
    facts = GraphFacts(model)
    counts: dict[str, int] = {}
    for node in facts.graph.node:
        if facts.runs_in_float(node):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _weight_initializer(facts: GraphFacts, node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The float initializer holding ``node``'s weight, if it is a weighted op with one."""
    position = WEIGHT_INPUT.get(node.op_type)
    if position is None or len(node.input) <= position:
        return None
    weight = facts.initializers.get(node.input[position])
    return weight if weight is not None and weight.data_type in _FLOAT_TYPES else None


def _is_depthwise(node: onnx.NodeProto, weight: onnx.TensorProto) -> bool:
    """A Conv with one input and one output channel per group (weight [group, 1, ...])."""
    group = attribute(node, "group", 1)
    return (node.op_type == "Conv" and group > 1 and len(weight.dims) > 1
            and weight.dims[0] == group and weight.dims[1] == 1)
