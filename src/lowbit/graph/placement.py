"""Quantizer placement, once for every front end: which values of a graph view get a quantizer
under a target, with which spec."""

from __future__ import annotations

from lowbit.graph.view import GraphView, Op
from lowbit.target import PASSTHROUGH_OPS, Target
from lowbit.target.points import QuantPoint, activation_spec, weight_spec
from lowbit.target.vocabulary import QUANTIZED_OP_TYPES

CARRIES_INPUT = PASSTHROUGH_OPS | {"Cast", "Expand", "Split"}
"""Op types whose output carries its first input's numbers (and so its encoding)."""
_NO_OPS = ("Identity", "Dropout")


def carries_input(op: Op) -> bool:
    """Whether ``op``'s output carries its first input's encoding (Reshape, MaxPool, Cast, ...)."""
    return op.type in CARRIES_INPUT


def quantizable(view: GraphView, value: str) -> bool:
    """A float value computed from data by an op that may carry a quantizer of its own: a quantized
    op type (``lowbit.target.vocabulary``), or a torch call outside the ONNX vocabulary."""
    op = view.producer(value)
    return (op is not None and view.is_float(value) and not view.is_mask_like(value)
            and any(op.inputs) and (op.type in QUANTIZED_OP_TYPES or op.opaque) and not carries_input(op))


def fused_values(view: GraphView, target: Target) -> set[str]:
    """Outputs of supergroup members but the last: the runtime fuses them, so they get no quantizer."""
    fused = set()
    for group in target.supergroups:
        for op in view.ops:
            if op.type != group[0]:
                continue
            chain, current = [op], op
            for op_type in group[1:]:
                follower = view.sole_consumer(current.outputs[0], _NO_OPS, chain)
                if follower is None or follower.type != op_type:
                    break
                current = follower
                chain.append(current)
            else:
                fused.update(member.outputs[0] for member in chain[:-1])
    return fused


def plan(view: GraphView, target: Target) -> list[QuantPoint]:
    """Quantizers for every value the target quantizes, in graph order: model inputs, then per op its inputs not yet
    quantized (where its rule says), its weight and its outputs; model outputs as the target says."""
    fused = fused_values(view, target)
    points: list[QuantPoint] = []
    quantized: set[str] = set()
    weights: set[str] = set()

    def source(value: str) -> str:
        return view.source(value, carries_input)

    def add_activation(value: str, op_type: str, rule, role: str) -> None:
        if rule.activation.dtype != "int" or value in quantized:
            return
        points.append(QuantPoint(value, role, value, op_type, activation_spec(rule, target),
                                 constraints=rule.encoding_constraints))
        quantized.add(value)

    for value in view.inputs:
        if view.is_float(value) and target.model_input_quantized:
            add_activation(value, "Input", target.op("__default__"), "input")
    for op in view.ops:
        if op.type is None:
            continue
        rule = target.op(op.type)
        if rule.input_quantized and not any(view.is_mask_like(v) for v in op.outputs):
            for index, argument in enumerate(op.inputs):
                if (argument and view.is_float(argument) and not view.is_mask_like(argument)
                        and source(argument) not in quantized):
                    points.append(QuantPoint(f"{op.name}_input{index}", "input", op.name, op.type,
                                             activation_spec(rule, target), argument=argument))
        if op.weight is not None and op.weight not in weights:
            spec = weight_spec(target.weight_rule(op.type, op.depthwise), op.type, axis=op.weight_axis,
                               strict=target.strict_symmetric)
            if spec is not None:
                weights.add(op.weight)
                points.append(QuantPoint(op.weight, "weight", op.name, op.type, spec, module=op.weight_owner))
        for value in op.outputs:
            if value and quantizable(view, value) and rule.output_quantized and value not in fused:
                add_activation(value, op.type, rule, "output")
    if target.model_output_quantized:
        for output in view.outputs:
            value = source(output)
            if quantizable(view, value) and value not in fused:
                add_activation(value, view.producer(value).type, target.op(view.producer(value).type), "output")
    if target.model_output_float:
        returned = {source(output) for output in view.outputs}
        points = [p for p in points if not (p.role == "output" and p.key in returned)]
    return points


def returned_values(view: GraphView) -> set[str]:
    """The values the model returns, directly or carried through ops such as Reshape."""
    return {view.source(output, carries_input) for output in view.outputs} | set(view.outputs)
