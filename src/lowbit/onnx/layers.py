"""Conv and Gemm nodes seen as the techniques see a layer: a weight ``[out, in/groups, *kernel]`` and a
bias ``[out]`` as torch tensors, read from and written back to the graph's initializers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from lowbit.onnx.attributes import attribute
from lowbit.onnx.plan import GraphFacts


@dataclass
class WeightedLayer:
    """One Conv or Gemm whose weight is an initializer only it reads; ``weight`` and ``bias`` are
    float64 copies in the techniques' layout (a Gemm without transB stores its weight transposed)."""

    node: onnx.NodeProto
    weight: torch.Tensor
    bias: torch.Tensor | None
    groups: int
    transposed: bool
    dtype: np.dtype

    @property
    def name(self) -> str:
        """The node's name, or its output tensor's where the node has none."""
        return self.node.name or self.node.output[0]

    @property
    def depthwise(self) -> bool:
        """groups == in == out channels (weight ``[C, 1, *kernel]``)."""
        return self.groups > 1 and self.groups == self.weight.shape[0] and self.weight.shape[1] == 1

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    def zero_free(self) -> bool:
        """Whether the layer adds no padding (a constant input shift maps to a constant output shift)."""
        if self.node.op_type == "Gemm":
            return True
        auto_pad = attribute(self.node, "auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad == "NOTSET":
            return not any(attribute(self.node, "pads", []))
        return auto_pad == "VALID" or all(k == 1 for k in self.weight.shape[2:])

    def ensure_bias(self) -> torch.Tensor:
        """The bias, created as zeros where the layer has none."""
        if self.bias is None:
            self.bias = torch.zeros(self.weight.shape[0], dtype=torch.float64)
        return self.bias

    def write(self, graph: onnx.GraphProto, facts: GraphFacts) -> None:
        """Store the weight and bias back (a bias initializer other nodes share is copied first)."""
        weight = self.weight.T if self.transposed else self.weight
        name = self.node.input[1]
        facts.initializers[name].CopyFrom(numpy_helper.from_array(weight.numpy().astype(self.dtype), name))
        if self.bias is None:
            return
        if len(self.node.input) > 2 and self.node.input[2] and len(facts.consumers[self.node.input[2]]) == 1:
            bias_name = self.node.input[2]
            facts.initializers[bias_name].CopyFrom(
                numpy_helper.from_array(self.bias.numpy().astype(self.dtype), bias_name))
            return
        bias_name = f"{self.name}_lowbit_bias"
        tensor = numpy_helper.from_array(self.bias.numpy().astype(self.dtype), bias_name)
        graph.initializer.append(tensor)
        facts.initializers[bias_name] = graph.initializer[-1]
        facts.consumers[bias_name] = [self.node]
        if len(self.node.input) > 2:
            self.node.input[2] = bias_name
        else:
            self.node.input.append(bias_name)


def weighted_layer(facts: GraphFacts, node: onnx.NodeProto) -> WeightedLayer | None:
    """``node`` as a WeightedLayer, or None: not a Conv or Gemm, a weight that is no initializer or is
    shared, a Gemm with transA, alpha ≠ 1, or a bias it scales or broadcasts."""
    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in facts.initializers:
        return None
    if len(facts.consumers[node.input[1]]) != 1:
        return None
    stored = numpy_helper.to_array(facts.initializers[node.input[1]])
    weight = torch.from_numpy(stored.astype(np.float64))
    transposed = False
    if node.op_type == "Gemm":
        if attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0 or weight.dim() != 2:
            return None
        transposed = not attribute(node, "transB", 0)
        weight = weight.T.contiguous() if transposed else weight
    bias = None
    if len(node.input) > 2 and node.input[2]:
        tensor = facts.initializers.get(node.input[2])
        if tensor is None or int(np.prod(tensor.dims)) != weight.shape[0] or len(tensor.dims) != 1:
            return None
        if node.op_type == "Gemm" and attribute(node, "beta", 1.0) != 1.0:
            return None
        bias = torch.from_numpy(numpy_helper.to_array(tensor).astype(np.float64))
    groups = attribute(node, "group", 1) if node.op_type == "Conv" else 1
    return WeightedLayer(node, weight, bias, groups, transposed, stored.dtype)
