"""Run a .tflite file in LiteRT (``ai_edge_litert``), with its default CPU kernels, on any batch size."""

from __future__ import annotations

import numpy as np
import torch

from lowbit.data import as_call
from lowbit.errors import ExportError
from lowbit.optional import require


class LiteRtModel:
    """A LiteRT interpreter of one model; calling it on a batch (array, tensor, or tuple / dict of them by input
    order or name) returns every output as a float array. Integer inputs and outputs (``integer_io`` files) are
    quantized (round half to even) and dequantized on their grids here, as the application around the file would."""

    def __init__(self, model, threads: int | None = None):
        lite = require("ai_edge_litert.interpreter", "LiteRT files", ExportError)
        content = model if isinstance(model, bytes) else None
        self.interpreter = lite.Interpreter(model_path=None if content else str(model), model_content=content,
                                            num_threads=threads)
        self.interpreter.allocate_tensors()
        self.inputs = self.interpreter.get_input_details()
        self.names = [o["name"] for o in self.interpreter.get_output_details()]

    def __call__(self, item) -> list[np.ndarray]:
        args, kwargs = as_call(item)
        values = list(args) + [kwargs[i["name"]] for i in self.inputs[len(args):] if i["name"] in kwargs]
        arrays = [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in values]
        interpreter = self.interpreter
        if any(tuple(i["shape"]) != a.shape for i, a in zip(self.inputs, arrays)):
            for detail, array in zip(self.inputs, arrays):
                interpreter.resize_tensor_input(detail["index"], array.shape)
            interpreter.allocate_tensors()
            self.inputs = interpreter.get_input_details()
        for detail, array in zip(self.inputs, arrays):
            interpreter.set_tensor(detail["index"], _to_input(array, detail))
        interpreter.invoke()
        return [_to_float(interpreter.get_tensor(o["index"]), o) for o in interpreter.get_output_details()]


def _to_input(array: np.ndarray, detail: dict) -> np.ndarray:
    """``array`` in the input's type: as float32, or quantized on an integer input's grid."""
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return array.astype(np.float32)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.rint(array.astype(np.float32) / np.float32(scale)) + zero_point, info.min, info.max).astype(dtype)


def _to_float(array: np.ndarray, detail: dict) -> np.ndarray:
    """An output as float32: an integer output dequantized on its grid."""
    if not np.issubdtype(array.dtype, np.integer):
        return array.copy()
    scale, zero_point = detail["quantization"]
    return ((array.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
