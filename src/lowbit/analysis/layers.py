"""A sim's quantizers grouped per layer: a weight quantizer with the activation quantizers its output reaches through
weight-free elementwise ops (ReLU, clip, BatchNorm); every other activation quantizer is a layer of its own."""

from __future__ import annotations

from dataclasses import dataclass

_ELEMENTWISE = frozenset({"Identity", "Relu", "Clip", "LeakyRelu", "Gelu", "Silu", "Sigmoid", "Tanh", "HardSigmoid",
                          "HardSwish", "BatchNormalization"})
"""Weight-free ops an activation quantizer after a layer is grouped with the layer through."""


@dataclass(frozen=True)
class LayerGroup:
    """One layer's quantizer keys; ``name`` is the module path (torch) or node name (ONNX) of weighted
    layers, else the graph node or tensor the quantizer follows."""

    name: str
    op_type: str
    weights: tuple[str, ...]
    activations: tuple[str, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return self.weights + self.activations


def layer_groups(sim) -> list[LayerGroup]:
    """The layers of a QuantSim or OnnxQuantSim in graph order, each with its quantizer keys."""
    view = sim.graph_view()
    ops = {} if view is None else {op.name: op for op in view.ops}
    weighted = {p.node for p in sim.points if p.role == "weight"}
    order: dict[str, list] = {}
    for point in sim.points:
        if point.role == "weight":
            op = ops.get(point.node)
            name = point.module if op is None else op.module or op.name
        else:
            name = _owner(view, weighted, point.node) if view is not None and point.role == "output" else None
            name = name or point.node
        entry = order.setdefault(name, [point.op_type, [], []])
        entry[1 if point.role == "weight" else 2].append(point.key)
        if point.role == "weight":
            entry[0] = point.op_type
    return [LayerGroup(name, op_type, tuple(w), tuple(a)) for name, (op_type, w, a) in order.items()]


def _owner(view, weighted: set[str], value: str) -> str | None:
    """The weighted layer ``value`` comes from through single-input elementwise ops, if any (its
    module path or node name)."""
    op = view.producer(value)
    while op is not None and op.name not in weighted:
        reads = [v for v in op.inputs if v]
        if op.type not in _ELEMENTWISE or len(reads) != 1:
            return None
        op = view.producer(reads[0])
    return None if op is None else op.module or op.name


def layer_configurations(group: LayerGroup) -> list[tuple[str, set[str], str]]:
    """(configuration, quantizers enabled, run it shares its start with) for one layer group: only this
    layer, all but it, and for layers with both, weights only and activations only."""
    configurations = [("only", set(group.keys), "float"), ("all_but", set(group.keys), "quantized")]
    if group.weights and group.activations:
        configurations += [("weight_only", set(group.weights), "float"),
                           ("activation_only", set(group.activations), "float")]
    return configurations
