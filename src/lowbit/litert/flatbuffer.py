"""A LiteRT (.tflite) model assembled tensor by tensor and operator by operator, serialised with the schema LiteRT
itself ships (``ai_edge_litert.schema_py_generated``)."""

from __future__ import annotations

import numpy as np

from lowbit.errors import ExportError
from lowbit.optional import require

TFLITE_TYPES = {np.dtype(np.float32): 0, np.dtype(np.int32): 2, np.dtype(np.int8): 9, np.dtype(np.int16): 7}
"""NumPy dtype → LiteRT TensorType."""


class TfliteBuilder:
    """Buffers, tensors, operator codes and operators of one subgraph; ``finish`` gives the file's bytes."""

    def __init__(self):
        self.schema = require("ai_edge_litert.schema_py_generated", "LiteRT files", ExportError)
        self.buffers = [self.schema.BufferT()]  # buffer 0: the empty buffer every computed tensor points at
        self.tensors, self.operators, self.codes = [], [], {}

    def tensor(self, name: str, shape, dtype, quantization: tuple | None = None, data: np.ndarray | None = None,
               dynamic_batch: bool = False) -> int:
        """Index of a new tensor; ``quantization`` = (scales, zero points, axis); ``data`` makes it a constant."""
        schema = self.schema
        tensor = schema.TensorT()
        tensor.name, tensor.shape, tensor.type = name, [int(d) for d in shape], TFLITE_TYPES[np.dtype(dtype)]
        if dynamic_batch and len(shape):
            tensor.shapeSignature = [-1, *tensor.shape[1:]]
        if quantization is not None:
            scales, zero_points, axis = quantization
            params = schema.QuantizationParametersT()
            params.scale = [float(s) for s in np.atleast_1d(scales)]
            params.zeroPoint = [int(z) for z in np.atleast_1d(zero_points)]
            params.quantizedDimension = int(axis)
            tensor.quantization = params
        tensor.buffer = 0
        if data is not None:
            buffer = schema.BufferT()
            buffer.data = np.ascontiguousarray(data, dtype=dtype).reshape(-1).view(np.uint8)
            self.buffers.append(buffer)
            tensor.buffer = len(self.buffers) - 1
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def constant(self, name: str, values, dtype=np.int32) -> int:
        """An unquantized constant (shapes, axes, paddings, permutations)."""
        array = np.asarray(values, dtype=dtype)
        return self.tensor(name, array.shape, dtype, data=array)

    def operator(self, op: str, inputs: list[int], outputs: list[int], options: str | None = None, **fields) -> None:
        """Append a builtin operator (``op`` names a ``BuiltinOperator``; ``options`` a ``BuiltinOptions`` member
        whose fields are ``fields``)."""
        schema = self.schema
        code = getattr(schema.BuiltinOperator, op)
        if code not in self.codes:
            entry = schema.OperatorCodeT()
            entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, min(code, 127), 1
            self.codes[code] = (len(self.codes), entry)
        operator = schema.OperatorT()
        operator.opcodeIndex, operator.inputs, operator.outputs = self.codes[code][0], list(inputs), list(outputs)
        if options is not None:
            operator.builtinOptionsType = getattr(schema.BuiltinOptions, options)
            operator.builtinOptions = getattr(schema, f"{options}T")()
            for key, value in fields.items():
                setattr(operator.builtinOptions, key, value)
        self.operators.append(operator)

    def finish(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        """The serialised model with one subgraph reading ``inputs`` and writing ``outputs``."""
        import flatbuffers
        schema = self.schema
        subgraph = schema.SubGraphT()
        subgraph.tensors, subgraph.operators = self.tensors, self.operators
        subgraph.inputs, subgraph.outputs, subgraph.name = list(inputs), list(outputs), "main"
        model = schema.ModelT()
        model.version, model.description, model.buffers, model.subgraphs = 3, description, self.buffers, [subgraph]
        model.operatorCodes = [entry for _, entry in sorted(self.codes.values(), key=lambda item: item[0])]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())
