"""A QDQ ONNX model (lowbit's export, from either front end) as an int8 LiteRT model: each float op between
DequantizeLinear and QuantizeLinear becomes LiteRT's integer op on the same encodings (no re-calibration), 4-D
activations in LiteRT's NHWC layout."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import onnx

from lowbit.errors import ExportError
from lowbit.litert.flatbuffer import TfliteBuilder
from lowbit.litert.qdq_reader import Grid, QdqGraph
from lowbit.onnx.attributes import attribute, reduce_axes

TO_NHWC, TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
ACTIVATIONS = ("Relu", "Clip")
PASS_THROUGH = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")
COMPUTING = ("Conv", "Gemm", "MatMul", "Add", "Mul", "GlobalAveragePool", "ReduceMean", "AveragePool", "MaxPool",
             "Concat")


@dataclass(frozen=True)
class Quantized:
    """An integer LiteRT tensor holding an ONNX tensor (its NCHW values permuted to NHWC when ``nhwc``)."""

    index: int
    grid: Grid
    shape: tuple[int, ...]
    nhwc: bool = False

    @property
    def stored_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[i] for i in TO_NHWC) if self.nhwc else self.shape


def qdq_to_tflite(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], description: str,
                  integer_io: bool = False) -> bytes:
    """The bytes of a .tflite file computing ``model`` in LiteRT's integer kernels, at ``input_shapes``
    (batch size free: a -1 batch in each tensor's shape signature); ``integer_io``: the inputs and outputs are the
    integer tensors on their quantizers' grids (no QUANTIZE / DEQUANTIZE ops: a fully integer model)."""
    return _Conversion(QdqGraph(model, input_shapes), integer_io).run(description)


class _Conversion:
    def __init__(self, graph: QdqGraph, integer_io: bool):
        self.graph, self.builder, self.integer_io = graph, TfliteBuilder(), integer_io
        self.quantized: dict[str, Quantized] = {}
        self.weights: dict[str, onnx.NodeProto] = {}
        self.floats: dict[str, int] = {}
        self.done: set[int] = set()  # ids of the nodes an earlier op took in

    def run(self, description: str) -> bytes:
        graph = self.graph
        inputs = []
        for name in graph.inputs:
            if self.integer_io:
                inputs.append(self._integer_input(name))
                continue
            index = self.builder.tensor(name, graph.shape(name), np.float32, dynamic_batch=True)
            self.floats[name] = index
            inputs.append(index)
        for node in graph.nodes:
            if id(node) not in self.done:
                self._convert(node)
        return self.builder.finish(inputs, [self._output(name) for name in graph.outputs], description)

    def _integer_input(self, name: str) -> int:
        """A model input as the integer tensor its one quantizer makes (that QuantizeLinear is then done)."""
        quantize = self.graph.sole_consumer(name, ("QuantizeLinear",))
        if quantize is None:
            raise ExportError(f"LiteRT export with integer inputs: input '{name}' must feed one quantizer alone")
        grid = self.graph.grid(quantize)
        value = self._tensor(name, grid, self.graph.shape(name), False)
        self.quantized[quantize.output[0]] = value
        self.done.add(id(quantize))
        return value.index

    def _convert(self, node: onnx.NodeProto) -> None:
        if node.op_type == "DequantizeLinear":
            if node.input[0] in self.graph.constants:
                self.weights[node.output[0]] = node
            else:
                self.quantized[node.output[0]] = self._activation(node.input[0], node)
        elif node.op_type == "QuantizeLinear":
            self._quantize(node)
        elif node.op_type in COMPUTING:
            self._computing(node)
        elif node.op_type in PASS_THROUGH:
            self._pass_through(node)
        elif node.op_type == "Pad":
            self._pad(node)
        elif node.op_type == "Softmax":
            self._softmax(node)
        else:
            raise ExportError(f"LiteRT export: {node.op_type} ('{node.name}') is not converted yet")

    def _activation(self, name: str, reader: onnx.NodeProto) -> Quantized:
        if name not in self.quantized:
            raise ExportError(f"LiteRT export: '{reader.name}' reads '{name}', which is not an integer tensor")
        return self.quantized[name]

    def _tensor(self, name: str, grid: Grid, shape: tuple[int, ...], nhwc: bool) -> Quantized:
        stored = tuple(shape[i] for i in TO_NHWC) if nhwc else shape
        index = self.builder.tensor(name, stored, grid.dtype, (grid.scale, grid.zero_point, 0), dynamic_batch=True)
        return Quantized(index, grid, shape, nhwc)

    def _quantize(self, node: onnx.NodeProto) -> None:
        """QUANTIZE from a float input, or to another grid from an integer tensor (the same grid: no op)."""
        grid, source = self.graph.grid(node), node.input[0]
        shape = self.graph.shape(source)
        if source in self.floats:
            out = self._tensor(node.output[0], grid, shape, False)
            self.builder.operator("QUANTIZE", [self.floats[source]], [out.index])
        else:
            given = self._activation(source, node)
            if given.grid.same_as(grid):
                self.quantized[node.output[0]] = given
                return
            out = self._tensor(node.output[0], grid, shape, given.nhwc)
            self.builder.operator("QUANTIZE", [given.index], [out.index])
        self.quantized[node.output[0]] = out

    def _output_pair(self, node: onnx.NodeProto) -> tuple[onnx.NodeProto, str]:
        """(the QuantizeLinear the op's result goes to, the fused activation), through a Relu or Clip between."""
        activation, value = "NONE", node.output[0]
        between = self.graph.sole_consumer(value, ACTIVATIONS)
        quantize = self.graph.sole_consumer(value, ("QuantizeLinear",))
        if between is not None:
            quantize = self.graph.sole_consumer(between.output[0], ("QuantizeLinear",))
            if quantize is not None:
                activation = self._fused(between, self.graph.grid(quantize))
                self.done.add(id(between))
        if quantize is None:
            raise ExportError(f"LiteRT export: the result of {node.op_type} '{node.name}' is not quantized")
        self.done.add(id(quantize))
        return quantize, activation

    def _fused(self, node: onnx.NodeProto, grid: Grid) -> str:
        """LiteRT's fused activation for a Relu or Clip before a quantizer."""
        if node.op_type == "Relu":
            return "RELU"
        bounds = [self.graph.constants.get(name) if name else None for name in node.input[1:3]]
        low = float(bounds[0]) if len(bounds) > 0 and bounds[0] is not None else attribute(node, "min", -math.inf)
        high = float(bounds[1]) if len(bounds) > 1 and bounds[1] is not None else attribute(node, "max", math.inf)
        named = {(0.0, 6.0): "RELU6", (0.0, math.inf): "RELU", (-1.0, 1.0): "RELU_N1_TO_1"}.get((low, high))
        if named:
            return named
        info = np.iinfo(grid.dtype)
        grid_low, grid_high = (float(grid.scale[0]) * (b - float(grid.zero_point[0])) for b in (info.min, info.max))
        if low <= grid_low and high >= grid_high:
            return "NONE"
        raise ExportError(f"LiteRT export: Clip({low}, {high}) '{node.name}' is no activation LiteRT fuses")

    def _nhwc(self, value: Quantized, nhwc: bool = True) -> Quantized:
        """``value`` in the layout asked for (a TRANSPOSE where it is in the other); tensors not 4-D as they are."""
        if len(value.shape) != 4 or value.nhwc == nhwc:
            return value
        out = self._tensor(f"{value.index}_{'nhwc' if nhwc else 'nchw'}", value.grid, value.shape, nhwc)
        perm = self.builder.constant(f"{out.index}_perm", TO_NHWC if nhwc else TO_NCHW)
        self.builder.operator("TRANSPOSE", [value.index, perm], [out.index], "TransposeOptions")
        return out

    def _computing(self, node: onnx.NodeProto) -> None:
        inputs = [self._activation(name, node) for name in node.input if name and name not in self.weights
                  and name not in self.graph.constants]
        if node.op_type == "MaxPool" and self.graph.sole_consumer(node.output[0], ("QuantizeLinear",)) is None:
            shape = self.graph.shape(node.output[0])  # on the input's grid, as onnxruntime runs it
            out = self._pool(node, self._nhwc(inputs[0]), inputs[0].grid, shape, "NONE", node.output[0])
            self.quantized[node.output[0]] = out
            return
        quantize, activation = self._output_pair(node)
        grid, shape = self.graph.grid(quantize), self.graph.shape(node.output[0])
        op = node.op_type
        if op == "Conv":
            out = self._conv(node, self._nhwc(inputs[0]), grid, shape, activation, quantize.output[0])
        elif op == "Gemm" or (op == "MatMul" and len(shape) == 2 and node.input[1] in self.weights):
            out = self._dense(node, inputs[0], grid, shape, activation, quantize.output[0])
        elif op == "MatMul":
            raise ExportError(f"LiteRT export: MatMul '{node.name}' is not a 2-D product with a constant weight")
        elif op in ("Add", "Mul"):
            if len(inputs) != 2:
                raise ExportError(f"LiteRT export: {op} '{node.name}' with a constant operand is not converted yet")
            nhwc = any(i.nhwc for i in inputs)
            a, b = (self._nhwc(i, nhwc) for i in inputs)
            out = self._tensor(quantize.output[0], grid, shape, nhwc and len(shape) == 4)
            self.builder.operator(op.upper(), [a.index, b.index], [out.index], f"{op}Options",
                                  fusedActivationFunction=self._code(activation))
        elif op == "GlobalAveragePool" or (op == "ReduceMean" and self._spatial_mean(node)):
            keep = op == "GlobalAveragePool" or bool(attribute(node, "keepdims", 1))
            source = self._nhwc(inputs[0])
            out = self._tensor(quantize.output[0], grid, shape, keep)
            axes = self.builder.constant(f"{out.index}_axes", [1, 2])
            self.builder.operator("MEAN", [source.index, axes], [out.index], "ReducerOptions", keepDims=keep)
        elif op == "ReduceMean":
            raise ExportError(f"LiteRT export: ReduceMean '{node.name}' is not over the spatial axes of a 4-D tensor")
        elif op == "Concat":
            axis = attribute(node, "axis", 0) % len(shape)
            parts = [self._nhwc(i, len(shape) == 4) for i in inputs]
            nhwc = len(shape) == 4
            out = self._tensor(quantize.output[0], grid, shape, nhwc)
            self.builder.operator("CONCATENATION", [p.index for p in parts], [out.index], "ConcatenationOptions",
                                  axis=TO_NCHW[axis] if nhwc else axis, fusedActivationFunction=self._code(activation))
        else:
            out = self._pool(node, self._nhwc(inputs[0]), grid, shape, activation, quantize.output[0])
        self.quantized[quantize.output[0]] = out

    def _spatial_mean(self, node: onnx.NodeProto) -> bool:
        """Whether a ReduceMean averages a 4-D NCHW tensor over its two spatial axes."""
        if len(self.graph.shape(node.input[0])) != 4:
            return False
        axes = reduce_axes(node, lambda name: self.graph.constants.get(name))
        return axes is not None and sorted(a % 4 for a in axes) == [2, 3]

    def _code(self, activation: str) -> int:
        return getattr(self.builder.schema.ActivationFunctionType, activation)

    def _padding(self, node: onnx.NodeProto, source: Quantized, kernel, strides, dilations) -> tuple[str, Quantized]:
        """("SAME" or "VALID", the input): a PAD first where the ONNX pads are neither (zero point as the value)."""
        pads = list(attribute(node, "pads", [0, 0, 0, 0]))
        if attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ExportError(f"LiteRT export: '{node.name}' uses auto_pad; export with explicit pads")
        if not any(pads):
            return "VALID", source
        same = []
        for size, k, s, d in zip(source.shape[2:], kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            same.append((total // 2, total - total // 2))
        if [p[0] for p in same] + [p[1] for p in same] == pads:
            return "SAME", source
        shape = (*source.shape[:2], source.shape[2] + pads[0] + pads[2], source.shape[3] + pads[1] + pads[3])
        out = self._tensor(f"{node.name}_padded", source.grid, shape, True)
        paddings = self.builder.constant(f"{node.name}_paddings", [[0, 0], [pads[0], pads[2]], [pads[1], pads[3]],
                                                                    [0, 0]])
        self.builder.operator("PAD", [source.index, paddings], [out.index], "PadOptions")
        return "VALID", out

    def _weight(self, name: str, layer: onnx.NodeProto) -> tuple[np.ndarray, Grid]:
        if name not in self.weights:
            raise ExportError(f"LiteRT export: the weight of '{layer.name}' is not a quantized constant")
        dq = self.weights[name]
        grid = self.graph.grid(dq)
        if grid.dtype not in (np.int8, np.int32) or np.any(grid.zero_point != 0):
            raise ExportError(f"LiteRT export: '{layer.name}' has {'asymmetric' if grid.dtype == np.int8 else 'wide'} "
                              f"weights; LiteRT's integer kernels take symmetric int8 weights (target 'litert-int8')")
        return self.graph.constant_values(dq), grid

    def _bias(self, node: onnx.NodeProto, index: int, channels: int, product_scale: np.ndarray) -> int:
        """The int32 bias on the grid input scale × weight scale (a float bias, as shared zero biases export, is
        rounded to it here; none: zeros, which LiteRT's int8 kernels require)."""
        name = node.input[index] if len(node.input) > index else ""
        if not name:
            scale, values = product_scale.astype(np.float64), np.zeros(channels)
        elif name in self.graph.constants and name not in self.weights:
            scale = product_scale.astype(np.float64)
            values = np.round(self.graph.constants[name].astype(np.float64) / scale)
        else:
            values, grid = self._weight(name, node)
            scale = np.broadcast_to(grid.scale, (channels,))
        return self.builder.tensor(f"{node.name}_bias", (channels,), np.int32, (scale, np.zeros(channels), 0),
                                   data=np.broadcast_to(values.reshape(-1), (channels,)).astype(np.int32))

    def _conv(self, node, source: Quantized, grid: Grid, shape, activation: str, name: str) -> Quantized:
        weight, weight_grid = self._weight(node.input[1], node)
        if weight.ndim != 4:
            raise ExportError(f"LiteRT export: '{node.name}' is a {weight.ndim - 2}-D convolution; LiteRT's is 2-D")
        out_channels, group_width, kh, kw = weight.shape
        groups, in_channels = attribute(node, "group", 1), source.shape[1]
        strides, dilations = attribute(node, "strides", [1, 1]), attribute(node, "dilations", [1, 1])
        padding, source = self._padding(node, source, (kh, kw), strides, dilations)
        depthwise = groups == in_channels and group_width == 1 and groups > 1
        stored = weight.transpose(1, 2, 3, 0) if depthwise else weight.transpose(0, 2, 3, 1)
        scales = np.broadcast_to(weight_grid.scale, (out_channels,))
        weights = self.builder.tensor(f"{node.name}_weight", stored.shape, np.int8,
                                      (scales, np.zeros(out_channels), 3 if depthwise else 0), data=stored)
        out = self._tensor(name, grid, shape, True)
        options = dict(padding=getattr(self.builder.schema.Padding, padding), strideH=strides[0], strideW=strides[1],
                       dilationHFactor=dilations[0], dilationWFactor=dilations[1],
                       fusedActivationFunction=self._code(activation))
        inputs = [source.index, weights, self._bias(node, 2, out_channels, source.grid.scale * scales)]
        if depthwise:
            self.builder.operator("DEPTHWISE_CONV_2D", inputs, [out.index], "DepthwiseConv2DOptions",
                                  depthMultiplier=out_channels // in_channels, **options)
        else:
            self.builder.operator("CONV_2D", inputs, [out.index], "Conv2DOptions", **options)
        return out

    def _dense(self, node, source: Quantized, grid: Grid, shape, activation: str, name: str) -> Quantized:
        if attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0 or attribute(node, "beta", 1.0) != 1.0:
            raise ExportError(f"LiteRT export: Gemm '{node.name}' with transA, alpha or beta is not converted")
        weight, weight_grid = self._weight(node.input[1], node)
        if not attribute(node, "transB", 0):
            weight = weight.T
        out_channels = weight.shape[0]
        scales = np.broadcast_to(weight_grid.scale, (out_channels,))
        weights = self.builder.tensor(f"{node.name}_weight", weight.shape, np.int8,
                                      (scales, np.zeros(out_channels), 0), data=weight)
        out = self._tensor(name, grid, shape, False)
        inputs = [self._nhwc(source, False).index, weights,
                  self._bias(node, 2, out_channels, source.grid.scale * scales)]
        self.builder.operator("FULLY_CONNECTED", inputs, [out.index], "FullyConnectedOptions",
                              fusedActivationFunction=self._code(activation))
        return out

    def _pool(self, node, source: Quantized, grid: Grid, shape, activation: str, name: str) -> Quantized:
        kernel, strides = attribute(node, "kernel_shape", None), attribute(node, "strides", [1, 1])
        if node.op_type == "AveragePool" and any(attribute(node, "pads", [0])) and \
                not attribute(node, "count_include_pad", 0):
            raise ExportError(f"LiteRT export: padded AveragePool '{node.name}' is not converted yet")
        padding, padded = self._padding(node, source, kernel, strides, (1, 1))
        if padded is not source and node.op_type == "MaxPool" and \
                np.any(source.grid.zero_point != np.iinfo(source.grid.dtype).min):
            raise ExportError(f"LiteRT export: MaxPool '{node.name}' pads unlike LiteRT's SAME on a grid below zero")
        out = self._tensor(name, grid, shape, True)
        self.builder.operator("MAX_POOL_2D" if node.op_type == "MaxPool" else "AVERAGE_POOL_2D", [padded.index],
                              [out.index], "Pool2DOptions", padding=getattr(self.builder.schema.Padding, padding),
                              strideH=strides[0], strideW=strides[1], filterHeight=kernel[0], filterWidth=kernel[1],
                              fusedActivationFunction=self._code(activation))
        return out

    def _pass_through(self, node: onnx.NodeProto) -> None:
        """Reshape, Flatten, Squeeze, Unsqueeze, Identity, Transpose on an integer tensor: the same grid."""
        source = self._activation(node.input[0], node)
        shape = self.graph.shape(node.output[0])
        if node.op_type == "Identity":
            self.quantized[node.output[0]] = source
            return
        if node.op_type == "Transpose":
            self.quantized[node.output[0]] = self._transpose(node, source, shape)
            return
        if source.nhwc and math.prod(source.shape[2:]) != 1:
            source = self._nhwc(source, False)  # NHWC and NCHW hold a 1x1 map's values in the same order
        out = self._tensor(node.output[0], source.grid, shape, False)
        target = self.builder.constant(f"{out.index}_shape", [-1, *shape[1:]])
        self.builder.operator("RESHAPE", [source.index, target], [out.index], "ReshapeOptions",
                              newShape=[-1, *shape[1:]])
        self.quantized[node.output[0]] = out

    def _pad(self, node: onnx.NodeProto) -> None:
        """A constant zero Pad of an integer tensor (LiteRT pads with the zero point: the value 0)."""
        source = self._activation(node.input[0], node)
        value = self.graph.constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else 0
        if attribute(node, "mode", b"constant") not in (b"constant", "constant") or np.any(np.asarray(value) != 0):
            raise ExportError(f"LiteRT export: Pad '{node.name}' pads other than with zeros")
        if node.input[1] not in self.graph.constants:
            raise ExportError(f"LiteRT export: Pad '{node.name}' computes its pad amounts; LiteRT's PAD takes "
                              f"constants")
        pads = np.asarray(self.graph.constants[node.input[1]]).reshape(2, -1).T
        order = TO_NHWC if source.nhwc else range(len(source.shape))
        out = self._tensor(node.output[0], source.grid, self.graph.shape(node.output[0]), source.nhwc)
        paddings = self.builder.constant(f"{out.index}_paddings", [pads[axis] for axis in order])
        self.builder.operator("PAD", [source.index, paddings], [out.index], "PadOptions")
        self.quantized[node.output[0]] = out

    def _softmax(self, node: onnx.NodeProto) -> None:
        """A Softmax over the last axis between two quantizers, in float: DEQUANTIZE, SOFTMAX, QUANTIZE (LiteRT's int8
        softmax needs a fixed 1/256 output grid, which calibration does not give)."""
        source = self._activation(node.input[0], node)
        shape = self.graph.shape(node.input[0])
        axis = attribute(node, "axis", -1) % len(shape)
        if axis != (1 if source.nhwc and len(shape) == 4 else len(shape) - 1):
            raise ExportError(f"LiteRT export: Softmax '{node.name}' is over axis {axis}; LiteRT's is the last")
        quantize = self.graph.sole_consumer(node.output[0], ("QuantizeLinear",))
        if quantize is None:
            raise ExportError(f"LiteRT export: the result of Softmax '{node.name}' is not quantized")
        stored = source.stored_shape
        values = self.builder.tensor(f"{node.name}_input", stored, np.float32, dynamic_batch=True)
        self.builder.operator("DEQUANTIZE", [source.index], [values])
        probabilities = self.builder.tensor(f"{node.name}_output", stored, np.float32, dynamic_batch=True)
        self.builder.operator("SOFTMAX", [values], [probabilities], "SoftmaxOptions", beta=1.0)
        out = self._tensor(quantize.output[0], self.graph.grid(quantize), shape, source.nhwc)
        self.builder.operator("QUANTIZE", [probabilities], [out.index])
        self.quantized[quantize.output[0]] = out
        self.done.add(id(quantize))

    def _transpose(self, node: onnx.NodeProto, source: Quantized, shape) -> Quantized:
        perm = tuple(attribute(node, "perm", list(reversed(range(len(source.shape))))))
        if len(perm) == 4 and not source.nhwc and perm == TO_NCHW:
            return replace(source, shape=shape, nhwc=True)  # the stored NHWC tensor is this NCHW one, permuted
        if len(perm) == 4 and source.nhwc and perm == TO_NHWC:
            return replace(source, shape=shape, nhwc=False)
        stored = tuple(TO_NCHW[p] for p in perm) if source.nhwc else perm
        out = self._tensor(node.output[0], source.grid, shape, False)
        self.builder.operator("TRANSPOSE", [source.index, self.builder.constant(f"{out.index}_perm", stored)],
                              [out.index], "TransposeOptions")
        return out

    def _output(self, name: str) -> int:
        """A model output in NCHW, as the ONNX model returns it: DEQUANTIZE of its integer tensor, or (integer I/O)
        that tensor itself, named as the output."""
        if name in self.floats:
            return self.floats[name]
        if name not in self.quantized:
            raise ExportError(f"LiteRT export: model output '{name}' is not quantized")
        value = self._nhwc(self.quantized[name], False)
        if self.integer_io:
            self.builder.tensors[value.index].name = name
            return value.index
        index = self.builder.tensor(name, value.shape, np.float32, dynamic_batch=True)
        self.builder.operator("DEQUANTIZE", [value.index], [index])
        return index
