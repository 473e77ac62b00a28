"""Which front end a model belongs to: an ``nn.Module`` goes to ``lowbit.torch``, an ONNX file path
or ``onnx.ModelProto`` to ``lowbit.onnx``."""

from __future__ import annotations

from pathlib import Path

import onnx


def is_onnx_model(model) -> bool:
    """Whether ``model`` is an ONNX model: a ModelProto, or a path whose name ends in ``.onnx``."""
    return isinstance(model, onnx.ModelProto) or (isinstance(model, (str, Path)) and str(model).endswith(".onnx"))
