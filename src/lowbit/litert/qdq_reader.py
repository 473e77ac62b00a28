"""What the LiteRT conversion reads from a QDQ ONNX model: constants (initializers and Constant nodes), each
tensor's static shape at a given input size, consumers, and each Q/DQ pair's encoding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from lowbit.errors import ExportError
from lowbit.onnx.attributes import attribute


@dataclass(frozen=True)
class Grid:
    """A Q/DQ encoding as LiteRT stores it: int8 (uint8 grids shifted by 128) or int16, per tensor or along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int
    dtype: type

    def same_as(self, other: Grid) -> bool:
        return (self.dtype == other.dtype and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))


FOLDED = ("Identity", "ConstantOfShape", "Concat", "Reshape", "Slice", "Transpose", "Cast", "Unsqueeze", "Squeeze",
          "Gather", "Range", "Expand", "Add", "Sub", "Mul", "Div", "Neg")
"""Ops computed here when every input is a constant (the pad amounts and shapes exporters compute)."""


def _evaluated(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of ``node`` on constant inputs, by onnx's reference implementation."""
    inputs = [name for name in node.input if name]
    outputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.output]
    graph = onnx.helper.make_graph([node], "fold", [], outputs,
                                   [numpy_helper.from_array(np.asarray(constants[name]), name) for name in inputs])
    return ReferenceEvaluator(onnx.helper.make_model(graph)).run(None, {})


class QdqGraph:
    """Nodes, constants, shapes and consumers of a QDQ model whose inputs take ``input_shapes`` (name → shape)."""

    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        self.constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type in FOLDED and all(name in self.constants for name in node.input if name):
                for name, value in zip(node.output, _evaluated(node, self.constants)):
                    self.constants[name] = value
                    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))  # for shapes
        self.inputs = [i.name for i in model.graph.input if i.name not in self.constants]
        self.outputs = [o.name for o in model.graph.output]
        for value in model.graph.input:
            if value.name in input_shapes:
                dims = value.type.tensor_type.shape.dim
                for dim, size in zip(dims, input_shapes[value.name]):
                    dim.Clear()
                    dim.dim_value = int(size)
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        self.shapes = {}
        for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
            dims = value.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self.shapes[value.name] = tuple(d.dim_value for d in dims)
        sizes: set[str] = set()  # values computed from tensor shapes alone: the static shapes above replace them
        for node in model.graph.node:
            inputs = [name for name in node.input if name]
            if node.op_type == "Shape" or (any(name in sizes for name in inputs) and all(
                    name in sizes or name in self.constants for name in inputs)):
                sizes.update(node.output)
        self.nodes = [n for n in model.graph.node if n.op_type != "Constant" and n.output[0] not in self.constants
                      and n.output[0] not in sizes]
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise ExportError(f"tensor '{name}' has no static shape at this input size: pass input_shape")
        return self.shapes[name]

    def sole_consumer(self, name: str, op_types: tuple[str, ...]) -> onnx.NodeProto | None:
        """The one node reading ``name`` if it is of ``op_types`` and ``name`` is no graph output."""
        readers = self.consumers.get(name, [])
        if len(readers) == 1 and readers[0].op_type in op_types and name not in self.outputs:
            return readers[0]
        return None

    def grid(self, node: onnx.NodeProto) -> Grid:
        """The encoding of a QuantizeLinear or DequantizeLinear node, on LiteRT's signed types."""
        scale = np.asarray(self.constants[node.input[1]], dtype=np.float32)
        zero_point = np.asarray(self.constants[node.input[2]]) if len(node.input) > 2 and node.input[2] else \
            np.zeros(scale.shape, np.uint8)
        dtype = {np.dtype(np.uint8): np.int8, np.dtype(np.int8): np.int8, np.dtype(np.int16): np.int16,
                 np.dtype(np.int32): np.int32}.get(zero_point.dtype)
        if dtype is None:
            raise ExportError(f"'{node.name}' stores {zero_point.dtype}: LiteRT takes 8-bit, 16-bit and int32 grids")
        shift = 128 if zero_point.dtype == np.uint8 else 0
        return Grid(scale.reshape(-1), zero_point.astype(np.int64).reshape(-1) - shift, attribute(node, "axis", 1),
                    dtype)

    def constant_values(self, dq: onnx.NodeProto) -> np.ndarray:
        """The stored integers a DequantizeLinear of a constant reads, on LiteRT's signed type."""
        values = self.constants[dq.input[0]]
        return (values.astype(np.int16) - 128).astype(np.int8) if values.dtype == np.uint8 else values
