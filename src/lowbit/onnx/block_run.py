"""A block of an ONNX graph run in torch for block-wise AdaRound: its nodes computed with torch ops, the
sim's quantizers applied where the QDQ graph applies them, each rounded layer's weight a parameter."""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from lowbit.graph.blocks import Block
from lowbit.onnx.attributes import attribute, clip_bounds
from lowbit.onnx.layer_rows import padded


def _conv(node, x, weight, bias=None):
    rank = weight.dim() - 2
    conv = F.conv1d if rank == 1 else F.conv2d
    return conv(padded(node, tuple(weight.shape[2:]), x), weight, bias,
                stride=tuple(attribute(node, "strides", [1] * rank)),
                dilation=tuple(attribute(node, "dilations", [1] * rank)), groups=attribute(node, "group", 1))


def _gemm(node, a, b, c=None):
    a = a.transpose(0, 1) if attribute(node, "transA", 0) else a
    b = b.transpose(0, 1) if attribute(node, "transB", 0) else b
    y = attribute(node, "alpha", 1.0) * (a @ b)
    return y if c is None else y + attribute(node, "beta", 1.0) * c


def _reshape(node, x, shape):
    dims = [x.shape[i] if size == 0 and not attribute(node, "allowzero", 0) else int(size)
            for i, size in enumerate(shape.tolist())]
    return x.reshape(dims)


def _flatten(node, x):
    axis = attribute(node, "axis", 1) % max(x.dim(), 1)
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _hard_sigmoid(node, x):
    return (attribute(node, "alpha", 0.2) * x + attribute(node, "beta", 0.5)).clamp(0, 1)


_OPS = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": lambda node, a, b: a @ b,
    "Add": lambda node, a, b: a + b, "Sub": lambda node, a, b: a - b, "Mul": lambda node, a, b: a * b,
    "Div": lambda node, a, b: a / b, "Relu": lambda node, x: torch.relu(x), "Sigmoid": lambda node, x: torch.sigmoid(x),
    "Tanh": lambda node, x: torch.tanh(x), "HardSwish": lambda node, x: F.hardswish(x), "HardSigmoid": _hard_sigmoid,
    "LeakyRelu": lambda node, x: F.leaky_relu(x, attribute(node, "alpha", 0.01)),
    "GlobalAveragePool": lambda node, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "Flatten": _flatten, "Reshape": _reshape, "Identity": lambda node, x: x, "Dropout": lambda node, x, *rest: x,
    "Concat": lambda node, *xs: torch.cat(xs, dim=attribute(node, "axis", 0)),
}


def runs_in_torch(nodes: list[onnx.NodeProto], initializers: dict) -> bool:
    """Whether :class:`OnnxBlock` computes every node (op types above, constant Clip bounds, 1-D/2-D Conv weights)."""
    for node in nodes:
        if node.op_type == "Clip":
            if any(math.isnan(bound) for bound in clip_bounds(initializers, node)):
                return False
        elif node.op_type not in _OPS:
            return False
        elif node.op_type == "Conv" and (node.input[1] not in initializers
                                         or len(initializers[node.input[1]].dims) not in (3, 4)):
            return False
    return True


class _Slot(nn.Module):
    """One rounded layer as block rounding sees it: ``layer.weight`` (the initializer's layout) and its quantizer."""

    def __init__(self, weight: torch.Tensor, quantizer: nn.Module):
        super().__init__()
        self.layer = nn.Module()
        self.layer.weight = nn.Parameter(weight, requires_grad=False)
        self.weight_quantizer = quantizer


class OnnxBlock(nn.Module):
    """Maps the block's input to its output as the sim computes it: value quantizers after each computed
    tensor (and on the input), op-input quantizers where their node reads, weights through their quantizers."""

    def __init__(self, block: Block, layers: tuple[str, ...], nodes: list[onnx.NodeProto], initializers: dict, sim):
        super().__init__()
        self.block, self.nodes = block, nodes
        quantizers, points = sim.quantizers(), sim.points
        self.on_value = {p.node: quantizers[p.key] for p in points if p.role != "weight" and p.argument is None}
        self.on_input = {(p.node, p.argument): quantizers[p.key] for p in points if p.argument is not None}
        on_weight = {p.module: quantizers[p.key] for p in points if p.role == "weight"}
        self.weight_of = {node.input[1]: layers.index(node.name) for node in nodes if node.name in layers}
        self.slots = nn.ModuleList([None] * len(layers))
        self.constants: dict[str, torch.Tensor] = {}
        self.weight_quantizers: dict[str, nn.Module] = {}
        for name in {i for node in nodes for i in node.input if i in initializers}:
            value = torch.from_numpy(np.array(numpy_helper.to_array(initializers[name])))
            value = value.float() if value.is_floating_point() else value
            if name in self.weight_of:
                self.slots[self.weight_of[name]] = _Slot(value, on_weight[name])
            else:
                self.constants[name] = value
                if name in on_weight:
                    self.weight_quantizers[name] = on_weight[name]
        self.clips = {node.name: clip_bounds(initializers, node) for node in nodes if node.op_type == "Clip"}

    def wrappers(self) -> list[_Slot]:
        """The rounded layers' slots, in the order of ``layers``."""
        return list(self.slots)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.block.input: self._quantized(self.block.input, x)}
        for node in self.nodes:
            args = [self._read(node, name, env) for name in node.input]
            value = args[0].clamp(*self.clips[node.name]) if node.op_type == "Clip" else _OPS[node.op_type](node, *args)
            env[node.output[0]] = self._quantized(node.output[0], value)
        return env[self.block.output]

    def _read(self, node: onnx.NodeProto, name: str, env: dict):
        if not name:
            return None
        if name in self.weight_of:
            slot = self.slots[self.weight_of[name]]
            return slot.weight_quantizer(slot.layer.weight)
        if name in self.constants:
            value = self.constants[name]
            quantizer = self.weight_quantizers.get(name)
            return value if quantizer is None else quantizer(value)
        quantizer = self.on_input.get((node.name, name))
        return env[name] if quantizer is None else quantizer(env[name])

    def _quantized(self, name: str, value: torch.Tensor) -> torch.Tensor:
        quantizer = self.on_value.get(name)
        return value if quantizer is None else quantizer(value)
