"""Calibration and evaluation batches as onnxruntime feeds, checked against the graph's inputs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import torch
from onnx import helper

from lowbit.errors import InputError


def as_tensors(batch):
    """A batch of numpy arrays (single, tuple/list or dict) as the same structure of torch tensors."""
    # ascontiguousarray makes 0-d arrays 1-d: keep the shape
    convert = lambda v: torch.from_numpy(np.ascontiguousarray(v).reshape(v.shape)) if isinstance(v, np.ndarray) else v
    if isinstance(batch, Mapping):
        return {k: convert(v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(convert(v) for v in batch)
    return convert(batch)


class GraphInputs:
    """Names, element types and shapes of a graph's data inputs (initializers excluded)."""

    def __init__(self, model: onnx.ModelProto):
        initializers = {t.name for t in model.graph.initializer}
        self.values = [i for i in model.graph.input if i.name not in initializers]
        self.names = [i.name for i in self.values]

    def feeds(self, args: tuple, kwargs: dict) -> dict[str, np.ndarray]:
        """The call's tensors by input name (positional in graph order), checked and cast."""
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        values = dict(zip(self.names, tensors))
        if len(tensors) > len(self.names):
            raise InputError(f"the batch has {len(args)} tensors but the model has {len(self.names)} inputs "
                             f"({', '.join(self.names)})")
        unknown = [k for k in kwargs if k not in self.names]
        if unknown:
            raise InputError(f"the batch names input '{unknown[0]}', which the model does not have; "
                             f"its inputs are: {', '.join(self.names)}")
        values.update(kwargs)
        missing = [n for n in self.names if n not in values]
        if missing:
            raise InputError(f"the batch has no value for model input '{missing[0]}' (the model's inputs: "
                             f"{', '.join(self.names)}; give each batch as a dict by input name, on the command "
                             f"line a .npz file or a .pt dict)")
        return {value.name: self._checked(value, values[value.name]) for value in self.values}

    @staticmethod
    def _checked(value: onnx.ValueInfoProto, tensor: torch.Tensor) -> np.ndarray:
        """``tensor`` as the numpy array input ``value`` expects; InputError on a rank or size mismatch."""
        tensor_type = value.type.tensor_type
        expected = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                    for d in tensor_type.shape.dim]  # exporters write -1 for a dynamic axis too
        shape = tuple(tensor.shape)
        if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
            wanted = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
            raise InputError(f"input '{value.name}' has shape {shape}; the model expects {wanted}")
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        array = tensor.detach().cpu().numpy()
        if array.dtype != dtype:
            if np.issubdtype(dtype, np.floating) != np.issubdtype(array.dtype, np.floating):
                raise InputError(f"input '{value.name}' is {array.dtype}; the model expects {dtype}")
            array = array.astype(dtype)
        return array
