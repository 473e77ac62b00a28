"""Conv, Gemm and MatMul nodes as the techniques see a layer: weight ``[out, in/groups, *kernel]`` and bias ``[out]``
as torch tensors, read from and written back to the initializers (a MatMul's bias: the constant of its sole Add)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from lowbit.onnx.attributes import attribute
from lowbit.onnx.graph_view import GraphFacts


@dataclass
class WeightedLayer:
    """A Conv, Gemm or MatMul with an unshared initializer weight; ``weight`` and ``bias`` are float64 copies in the
    techniques' layout (transposed from a MatMul's or a Gemm's without transB); ``bias_reader`` reads the bias."""

    node: onnx.NodeProto
    weight: torch.Tensor
    bias: torch.Tensor | None
    groups: int
    transposed: bool
    dtype: np.dtype
    bias_reader: onnx.NodeProto | None = None

    @property
    def inner_bias(self) -> torch.Tensor | None:
        """The bias the node itself adds (None for a MatMul, whose Add comes after its output)."""
        return None if self.node.op_type == "MatMul" else self.bias

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
        if self.node.op_type != "Conv":
            return True
        auto_pad = attribute(self.node, "auto_pad", b"NOTSET")  # a string attribute's value is bytes
        if auto_pad == b"NOTSET":
            return not any(attribute(self.node, "pads", []))
        return auto_pad == b"VALID" or all(k == 1 for k in self.weight.shape[2:])

    def ensure_bias(self) -> torch.Tensor | None:
        """The bias, created as zeros where a Conv or Gemm has none (a MatMul without Add: None)."""
        if self.bias is None and self.node.op_type != "MatMul":
            self.bias = torch.zeros(self.weight.shape[0], dtype=torch.float64)
        return self.bias

    def write(self, graph: onnx.GraphProto, facts: GraphFacts) -> None:
        """Store the weight and bias back (a bias initializer other nodes share is copied first)."""
        weight = self.weight.T if self.transposed else self.weight
        name = self.node.input[1]
        facts.initializers[name].CopyFrom(numpy_helper.from_array(weight.numpy().astype(self.dtype), name))
        if self.bias is None:
            return
        bias = self.bias.numpy().astype(self.dtype)
        reader = self.bias_reader or self.node
        position = 2 if reader is self.node else next(i for i, n in enumerate(reader.input)
                                                      if n in facts.initializers)
        current = reader.input[position] if len(reader.input) > position else ""
        if current and len(facts.consumers[current]) == 1:
            facts.initializers[current].CopyFrom(numpy_helper.from_array(bias, current))
            return
        bias_name = f"{self.name}_lowbit_bias"
        graph.initializer.append(numpy_helper.from_array(bias, bias_name))
        facts.initializers[bias_name] = graph.initializer[-1]
        facts.consumers[bias_name] = [reader]
        if current:
            facts.consumers[current].remove(reader)
            reader.input[position] = bias_name
        else:
            reader.input.append(bias_name)


def weighted_layer(facts: GraphFacts, node: onnx.NodeProto) -> WeightedLayer | None:
    """``node`` as a WeightedLayer, or None: not a Conv, Gemm or MatMul, a shared or non-initializer weight (MatMul: not
    2-D), or a Gemm with transA, alpha ≠ 1, or a bias it scales or broadcasts."""
    if (node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in facts.initializers
            or len(facts.consumers[node.input[1]]) != 1):
        return None
    stored = numpy_helper.to_array(facts.initializers[node.input[1]])
    weight = torch.from_numpy(stored.astype(np.float64))
    if node.op_type in ("Gemm", "MatMul") and weight.dim() != 2:
        return None
    if node.op_type == "Gemm" and (attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0):
        return None
    transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not attribute(node, "transB", 0))
    weight = weight.T.contiguous() if transposed else weight
    if node.op_type == "MatMul":
        add = _bias_add(facts, node, weight.shape[0])
        bias = None if add is None else _vector(facts, next(i for i in add.input if i in facts.initializers))
        return WeightedLayer(node, weight, bias, 1, True, stored.dtype, add)
    bias = None
    if len(node.input) > 2 and node.input[2]:
        tensor = facts.initializers.get(node.input[2])
        if (tensor is None or int(np.prod(tensor.dims)) != weight.shape[0] or len(tensor.dims) != 1
                or (node.op_type == "Gemm" and attribute(node, "beta", 1.0) != 1.0)):
            return None
        bias = _vector(facts, node.input[2])
    groups = attribute(node, "group", 1) if node.op_type == "Conv" else 1
    return WeightedLayer(node, weight, bias, groups, transposed, stored.dtype)


def _bias_add(facts: GraphFacts, node: onnx.NodeProto, channels: int) -> onnx.NodeProto | None:
    """The Add that alone reads ``node``'s output and adds a constant ``[channels]`` vector, if any."""
    readers = facts.consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "Add" or node.output[0] in facts.graph_outputs:
        return None
    constants = [i for i in readers[0].input if i in facts.initializers]
    if len(constants) != 1 or list(facts.initializers[constants[0]].dims) != [channels]:
        return None
    return readers[0]


def _vector(facts: GraphFacts, name: str) -> torch.Tensor:
    return torch.from_numpy(numpy_helper.to_array(facts.initializers[name]).astype(np.float64).reshape(-1))
