"""A sim's quantizers grouped per layer: a weighted layer's weight quantizer with the activation
quantizers its output reaches through weight-free elementwise ops (ReLU, clip, folded BatchNorm);
every other activation quantizer (model input, residual add, pooling) is a layer of its own."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from torch import fx, nn

from lowbit.torch.weight_quantized import WeightQuantized

_PASS_MODULES = (nn.Identity, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Hardswish,
                 nn.Sigmoid, nn.Tanh)
_PASS_FUNCTIONS = {"relu", "relu6", "hardtanh", "clamp", "leaky_relu", "gelu", "silu", "hardswish", "sigmoid",
                   "tanh", "clip"}
_PASS_ONNX_OPS = {"Identity", "Relu", "Clip", "LeakyRelu", "Gelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
                  "BatchNormalization"}


@dataclass(frozen=True)
class LayerGroup:
    """One layer's quantizer keys; ``name`` is the module path (weighted layers) or the graph node."""

    name: str
    op_type: str
    weights: tuple[str, ...]
    activations: tuple[str, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return self.weights + self.activations


def layer_groups(sim) -> list[LayerGroup]:
    """The layers of a torch or ONNX QuantSim in graph order, each with its quantizer keys; an ONNX
    layer is named by its node (weighted layers) or the tensor its quantizer reads."""
    is_onnx = isinstance(sim.model, onnx.ModelProto)
    owner = _onnx_owners(sim) if is_onnx else _owners(sim)
    order: dict[str, list] = {}
    for point in sim.points:
        if point.role == "weight":
            name = point.node if is_onnx else point.module
        else:
            name = owner.get(point.node, point.node)
        entry = order.setdefault(name, [point.op_type, [], []])
        entry[1 if point.role == "weight" else 2].append(point.key)
        if point.role == "weight":
            entry[0] = point.op_type
    return [LayerGroup(name, op_type, tuple(w), tuple(a)) for name, (op_type, w, a) in order.items()]


def _owners(sim) -> dict[str, str]:
    """For each fx node whose output is quantized, the weighted module it follows, if any."""
    graph_module = sim.model
    if not isinstance(graph_module, fx.GraphModule):
        return {}
    nodes = {node.name: node for node in graph_module.graph.nodes}
    owners = {}
    for point in sim.points:
        if point.role != "output" or point.node not in nodes:
            continue
        node = nodes[point.node]
        while node is not None:
            module = graph_module.get_submodule(node.target) if node.op == "call_module" else None
            if isinstance(module, WeightQuantized):
                owners[point.node] = node.target
                break
            node = _single_input(node, module)
    return owners


def _onnx_owners(sim) -> dict[str, str]:
    """For each quantized tensor of an ONNX sim, the weighted node it follows through pass-through ops."""
    weighted = {point.node for point in sim.points if point.role == "weight"}
    producer = {output: node for node in sim.model.graph.node for output in node.output}
    owners = {}
    for point in sim.points:
        if point.role == "weight" or point.argument is not None:
            continue
        node = producer.get(point.node)
        while node is not None and node.name not in weighted and node.op_type in _PASS_ONNX_OPS:
            node = producer.get(node.input[0])
        if node is not None and node.name in weighted:
            owners[point.node] = node.name
    return owners


def _single_input(node: fx.Node, module) -> fx.Node | None:
    """The producer of ``node``'s only tensor input when ``node`` is a weight-free elementwise op."""
    passes = isinstance(module, _PASS_MODULES) or (
        node.op in ("call_function", "call_method") and getattr(node.target, "__name__", node.target) in _PASS_FUNCTIONS)
    inputs = node.all_input_nodes
    return inputs[0] if passes and len(inputs) == 1 else None
