"""Which front end a model or sim belongs to, chosen here and nowhere else: an ``nn.Module`` or a
``QuantSim`` goes to ``lowbit.torch``, an ONNX file path, ``onnx.ModelProto`` or ``OnnxQuantSim`` to
``lowbit.onnx``. Each front end is an object with the same steps (``lowbit.torch.front_end``,
``lowbit.onnx.front_end``); a third one plugs in here."""

from __future__ import annotations

from pathlib import Path

import onnx


def is_onnx_model(model) -> bool:
    """Whether ``model`` is an ONNX model: a ModelProto, or a path whose name ends in ``.onnx``."""
    return isinstance(model, onnx.ModelProto) or (isinstance(model, (str, Path)) and str(model).endswith(".onnx"))


def front_end(model_or_sim):
    """The front end (``TorchFrontEnd`` or ``OnnxFrontEnd``) for a model or for a sim it built."""
    from lowbit.onnx.front_end import OnnxFrontEnd
    from lowbit.torch.front_end import TorchFrontEnd
    if is_onnx_model(model_or_sim) or isinstance(model_or_sim, OnnxFrontEnd.sim_type):
        return OnnxFrontEnd
    return TorchFrontEnd
