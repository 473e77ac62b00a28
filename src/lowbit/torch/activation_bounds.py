"""The range a clipping activation (ReLU, ReLU6, Hardtanh, clamp) limits its output to, read from the sim's graph:
a learned grid must stay inside it, or onnxruntime cannot fuse the activation into the layer before it."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import fx, nn

from lowbit.torch.module_graph import node_arg

_RELU = (0.0, math.inf)


def activation_bounds(gm: nn.Module, name: str) -> tuple[float, float] | None:
    """(low, high) of the clipping activation computing node ``name`` of ``gm``, or None for any other node."""
    if not isinstance(gm, fx.GraphModule):
        return None
    node = next((n for n in gm.graph.nodes if n.name == name), None)
    if node is None:
        return None
    if node.op == "call_module":
        return _module_bounds(gm.get_submodule(node.target))
    if node.op == "call_function":
        return _function_bounds(node)
    if node.op == "call_method":
        return _RELU if node.target in ("relu", "relu_") else _clamp_bounds(node) if node.target == "clamp" else None
    return None


def _module_bounds(module: nn.Module) -> tuple[float, float] | None:
    if isinstance(module, nn.ReLU):
        return _RELU
    if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
        return float(module.min_val), float(module.max_val)
    return None


def _function_bounds(node: fx.Node) -> tuple[float, float] | None:
    if node.target in (torch.relu, F.relu):
        return _RELU
    if node.target is F.relu6:
        return 0.0, 6.0
    if node.target is F.hardtanh:
        return _numbers(node_arg(node, 1, "min_val", -1.0), node_arg(node, 2, "max_val", 1.0))
    if node.target is torch.clamp:
        return _clamp_bounds(node)
    return None


def _clamp_bounds(node: fx.Node) -> tuple[float, float] | None:
    low, high = node_arg(node, 1, "min"), node_arg(node, 2, "max")
    return _numbers(-math.inf if low is None else low, math.inf if high is None else high)


def _numbers(low, high) -> tuple[float, float] | None:
    """The two bounds as floats, or None where either is computed (a tensor, another node)."""
    if isinstance(low, numbers.Real) and isinstance(high, numbers.Real):
        return float(low), float(high)
    return None
