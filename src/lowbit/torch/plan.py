"""Quantization plan for a torch.fx graph: which tensors get a quantizer, with which spec."""

from __future__ import annotations

import torch
from torch import fx

from lowbit.quant.spec import QuantSpec
from lowbit.target import PASSTHROUGH_OPS, Target
from lowbit.target.points import QuantPoint, activation_spec, weight_spec
from lowbit.target.rules import OpRule
from lowbit.torch.op_types import NON_TENSOR_METHODS, WEIGHTED_OP_TYPES, function_op_type, method_op_type, module_op_type
from lowbit.torch.pair_saturation import is_depthwise


def node_op_type(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """ONNX op type of a compute node; None for inputs, outputs, attributes and non-tensor ops."""
    if node.op == "call_module":
        return module_op_type(gm.get_submodule(node.target))
    if node.op == "call_function":
        return function_op_type(node.target)
    if node.op == "call_method":
        return None if node.target in NON_TENSOR_METHODS else method_op_type(node.target)
    return None


class _GraphFacts:
    """Per-node facts the placement needs: op type, float-ness, mask-likeness, producers."""

    def __init__(self, gm: fx.GraphModule, dtypes: dict[str, torch.dtype]):
        self.gm = gm
        self.op_type = {n: node_op_type(gm, n) for n in gm.graph.nodes}
        self.is_float = {n: bool(dtypes.get(n.name) is not None and dtypes[n.name].is_floating_point)
                         for n in gm.graph.nodes}
        self.mask_like = {}
        for node in gm.graph.nodes:
            self.mask_like[node] = self._is_mask_like(node, dtypes)

    def _is_mask_like(self, node: fx.Node, dtypes) -> bool:
        """Computed only from non-float model inputs and constants, with no weights on the way."""
        if node.op == "placeholder":
            return not self.is_float[node]
        if node.op == "get_attr" or (node.op == "call_module" and self.op_type[node] in WEIGHTED_OP_TYPES):
            return False
        # only tensor inputs count: ``mask.to(x.dtype)`` reads x's dtype, not its values
        inputs = [a for a in node.all_input_nodes if a.name in dtypes]
        return bool(inputs) and all(self.mask_like[a] for a in inputs)

    def is_passthrough(self, node: fx.Node) -> bool:
        return self.op_type[node] in PASSTHROUGH_OPS or self.op_type[node] in ("Cast", "Expand", "Split")

    def quantizable(self, node: fx.Node) -> bool:
        """A float tensor computed by an op that may carry a quantizer of its own."""
        return (node.op in ("call_module", "call_function", "call_method")
                and self.op_type[node] is not None and self.is_float[node]
                and not self.mask_like[node] and not self.is_passthrough(node))

    def producer(self, node: fx.Node) -> fx.Node:
        """The node whose values ``node`` carries, looking through pass-through ops."""
        while self.is_passthrough(node) and node.all_input_nodes:
            node = node.all_input_nodes[0]
        return node


_NO_OPS = ("Identity", "Dropout")


def _sole_user_skipping_no_ops(facts: _GraphFacts, node: fx.Node, chain: list) -> fx.Node | None:
    """The only reader of ``node``'s output, looking through Identity/Dropout (added to ``chain``)."""
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None
        if facts.op_type[users[0]] not in _NO_OPS:
            return users[0]
        node = users[0]
        chain.append(node)


def _fused_nodes(facts: _GraphFacts, target: Target) -> set[fx.Node]:
    """Nodes inside a supergroup (all members but the last): their outputs get no quantizer."""
    fused = set()
    for group in target.supergroups:
        for node in facts.gm.graph.nodes:
            if facts.op_type[node] != group[0]:
                continue
            chain, current, matched = [node], node, 1
            for op_type in group[1:]:
                follower = _sole_user_skipping_no_ops(facts, current, chain)
                if follower is None or facts.op_type[follower] != op_type:
                    break
                current, matched = follower, matched + 1
                chain.append(current)
            if matched == len(group):
                fused.update(chain[:-1])
    return fused


def plan_graph(gm: fx.GraphModule, dtypes: dict[str, torch.dtype], target: Target) -> list[QuantPoint]:
    """Quantizers for every tensor the target quantizes, in graph order."""
    facts = _GraphFacts(gm, dtypes)
    fused = _fused_nodes(facts, target)
    points: list[QuantPoint] = []
    quantized_outputs: set[fx.Node] = set()
    weighted_modules: set[str] = set()
    default_rule = target.op("__default__")

    def add_output(node: fx.Node, rule: OpRule, role: str) -> None:
        if rule.activation.dtype != "int":
            return
        points.append(QuantPoint(node.name, role, node.name, facts.op_type[node] or "Input",
                                 activation_spec(rule, target), constraints=rule.encoding_constraints))
        quantized_outputs.add(node)

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if facts.is_float[node] and target.model_input_quantized:
                add_output(node, default_rule, "input")
            continue
        if node.op == "output" or facts.op_type[node] is None:
            continue
        op_type = facts.op_type[node]
        rule = target.op(op_type)
        if rule.input_quantized and not facts.mask_like[node]:
            for index, argument in enumerate(node.all_input_nodes):
                source = facts.producer(argument)
                if facts.is_float[argument] and not facts.mask_like[argument] and source not in quantized_outputs:
                    points.append(QuantPoint(f"{node.name}_input{index}", "input", node.name, op_type,
                                             activation_spec(rule, target), argument=argument.name))
        if node.op == "call_module" and op_type in WEIGHTED_OP_TYPES and node.target not in weighted_modules:
            module = gm.get_submodule(node.target)
            spec = weight_spec(target.weight_rule(op_type, is_depthwise(module)), op_type)
            if spec is not None and isinstance(getattr(module, "weight", None), torch.Tensor):
                if op_type == "Gather":
                    spec = QuantSpec(spec.bits, spec.symmetric, True)
                weighted_modules.add(node.target)
                points.append(QuantPoint(f"{node.target}.weight", "weight", node.name, op_type, spec,
                                         module=node.target))
        if facts.quantizable(node) and rule.output_quantized and node not in fused:
            add_output(node, rule, "output")

    if target.model_output_quantized:
        output = next(n for n in gm.graph.nodes if n.op == "output")
        for argument in output.all_input_nodes:
            source = facts.producer(argument)
            if facts.quantizable(source) and source not in quantized_outputs and source not in fused:
                add_output(source, target.op(facts.op_type[source]), "output")
    if target.model_output_float:
        output = next(n for n in gm.graph.nodes if n.op == "output")
        returned = {facts.producer(argument).name for argument in output.all_input_nodes}
        points = [p for p in points if not (p.role == "output" and p.node in returned)]
    return points
