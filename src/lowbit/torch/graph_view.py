"""A torch.fx graph as a ``lowbit.graph`` view: modules, functions and methods as ONNX-typed ops."""

from __future__ import annotations

from collections import Counter

import torch
from torch import fx, nn

from lowbit.graph.view import GraphView, Layer, Op
from lowbit.target.points import WEIGHT_CHANNEL_AXIS
from lowbit.torch.op_types import (FUNCTION_OP_TYPES, METHOD_OP_TYPES, MODULE_OP_TYPES, NON_TENSOR_METHODS,
                                   WEIGHTED_OP_TYPES, function_op_type, module_op_type)
from lowbit.torch.pair_saturation import is_depthwise

_VOCABULARY = frozenset(MODULE_OP_TYPES.values()) | frozenset(METHOD_OP_TYPES.values()) | frozenset(
    t for t in FUNCTION_OP_TYPES.values() if t is not None)
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CALLS = ("call_module", "call_function", "call_method")


def node_op_type(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """ONNX op type of a compute node; None for inputs, outputs, attributes and non-tensor ops."""
    if node.op == "call_module":
        return module_op_type(gm.get_submodule(node.target))
    if node.op == "call_function":
        return function_op_type(node.target)
    if node.op == "call_method":
        return None if node.target in NON_TENSOR_METHODS else METHOD_OP_TYPES.get(node.target, node.target)
    return None


def fx_view(gm: fx.GraphModule, dtypes: dict[str, torch.dtype] | None = None) -> GraphView:
    """``gm`` as a graph view; ``dtypes`` (by node name) tell tensors and float values apart (without
    them every node counts as a float tensor, enough for graph walks that ignore dtypes)."""
    nodes = list(gm.graph.nodes)
    if dtypes is None:
        tensors, float_values = {n.name for n in nodes}, {n.name for n in nodes}
    else:
        tensors = set(dtypes)
        float_values = {name for name, dtype in dtypes.items() if dtype is not None and dtype.is_floating_point}
    calls = Counter(node.target for node in nodes if node.op == "call_module")
    ops = [_op(gm, node, tensors, calls) for node in nodes if node.op in _CALLS]
    output = next(n for n in nodes if n.op == "output")
    return GraphView(ops, [n.name for n in nodes if n.op == "placeholder"],
                     [n.name for n in output.all_input_nodes], float_values)


def _op(gm: fx.GraphModule, node: fx.Node, tensors: set[str], calls: Counter) -> Op:
    op_type = node_op_type(gm, node)
    inputs = tuple(a.name if a.name in tensors else "" for a in node.all_input_nodes)
    fields = {"opaque": op_type is not None and op_type not in _VOCABULARY}
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        fields["module"] = node.target
        if op_type in WEIGHTED_OP_TYPES and isinstance(getattr(module, "weight", None), torch.Tensor):
            fields.update(weight=f"{node.target}.weight", weight_owner=node.target,
                          weight_axis=WEIGHT_CHANNEL_AXIS.get(op_type), depthwise=is_depthwise(module))
        if isinstance(module, _LAYERS):
            linear = isinstance(module, nn.Linear)
            fields["layer"] = Layer(module.in_features if linear else module.in_channels,
                                    module.out_features if linear else module.out_channels,
                                    1 if linear else module.groups)
        if isinstance(module, nn.Hardtanh) and calls[node.target] == 1:
            fields["clip"] = (module.min_val, module.max_val)
    return Op(node.name, op_type, inputs, (node.name,), **fields)
