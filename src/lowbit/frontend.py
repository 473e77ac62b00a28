"""Which front end a model or sim belongs to, chosen here and nowhere else: ``lowbit.torch`` for an ``nn.Module`` or
``QuantSim``, ``lowbit.onnx`` for an ONNX file path, ``onnx.ModelProto`` or ``OnnxQuantSim``, ``lowbit.keras`` for a Keras model,
``.keras`` file or SavedModel folder (its sim is an ``OnnxQuantSim``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx


@dataclass(frozen=True)
class FrontEnd:
    """The steps ``lowbit.quantize`` and the technique verbs take on one kind of model: ``prepare`` gives a working
    copy, ``fold_batchnorm`` returns (model, line), ``equalize`` (copy, groups); techniques change a sim in place."""

    name: str
    needs_example: bool
    sim_type: type
    prepare: Callable
    fold_batchnorm: Callable
    equalize: Callable
    sim: Callable
    sequential_mse: Callable
    adaround: Callable
    correct_bias: Callable
    onnx_graph: bool = False
    """Whether the sim runs an ONNX graph in onnxruntime (data as arrays or tensors, no tracing)."""


def is_onnx_model(model) -> bool:
    """Whether ``model`` is an ONNX model: a ModelProto, or a path whose name ends in ``.onnx``."""
    return isinstance(model, onnx.ModelProto) or (isinstance(model, (str, Path)) and str(model).endswith(".onnx"))


def front_end(model_or_sim) -> FrontEnd:
    """The front end for a model or for a sim it built."""
    from lowbit.keras.convert import is_keras_model
    from lowbit.onnx.front_end import ONNX_FRONT_END
    from lowbit.torch.front_end import TORCH_FRONT_END
    if is_keras_model(model_or_sim):
        from lowbit.keras.front_end import KERAS_FRONT_END
        return KERAS_FRONT_END
    if is_onnx_model(model_or_sim) or isinstance(model_or_sim, ONNX_FRONT_END.sim_type):
        return ONNX_FRONT_END
    return TORCH_FRONT_END
