"""Keras 3 models and TensorFlow SavedModels as ONNX graphs: Keras's own ONNX export (tf2onnx under the
TensorFlow backend; torch.onnx under torch and jax2onnx under JAX, their graphs then cleaned), so every technique
of the ONNX front end applies unchanged."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from lowbit.data import as_call
from lowbit.errors import ModelLoadError, first_line
from lowbit.keras.graph_cleanup import cleaned
from lowbit.optional import require


def is_keras_model(model) -> bool:
    """Whether ``model`` is a Keras model, a ``.keras`` file or a SavedModel folder (checked without importing
    TensorFlow)."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        return path.suffix == ".keras" or (path / "saved_model.pb").is_file()
    return any(cls.__module__.split(".")[0] in ("keras", "tf_keras") and cls.__name__ in ("Model", "Layer")
               for cls in type(model).__mro__)


def keras_to_onnx(model, example_input) -> onnx.ModelProto:
    """The ONNX graph of a Keras model (object or ``.keras`` file) or SavedModel folder, with a dynamic batch
    size; ``example_input`` builds a model that was never called."""
    keras = require("keras")
    if isinstance(model, (str, Path)) and (Path(model) / "saved_model.pb").is_file():
        return _saved_model_to_onnx(Path(model))
    if isinstance(model, (str, Path)):
        model = _load_keras_file(keras, Path(model))
    if not model.built or not getattr(model, "_called", True):
        args, kwargs = as_call(example_input)
        model(*[np.asarray(a)[:1] for a in args], **{k: np.asarray(v)[:1] for k, v in kwargs.items()})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        try:
            model.export(str(path), format="onnx", verbose=False)
        except Exception as e:  # tf2onnx and keras raise many kinds; the first line names the layer or op
            raise ModelLoadError(f"Keras model '{model.name}' could not be converted to ONNX: "
                                 f"{first_line(e)}") from None
        proto = onnx.load(str(path))
    _check_ops(proto, f"Keras model '{model.name}'", {layer.name for layer in model.layers})
    if keras.backend.backend() in ("torch", "jax"):
        return cleaned(proto)
    _bind_captured_constants(keras, model, proto)
    return proto


def _bind_captured_constants(keras, model, proto: onnx.ModelProto) -> None:
    """Turn the graph inputs tf2onnx made of tensors the model's function captures (a Normalization layer's mean and
    variance, as in keras.applications' EfficientNets) into initializers holding their values (in place)."""
    from keras.src.export.export_utils import get_input_signature
    from keras.src.export.onnx import get_concrete_fn, make_tf_tensor_spec
    signature = keras.tree.map_structure(make_tf_tensor_spec, get_input_signature(model))
    taken = len(keras.tree.flatten(signature))
    if len(proto.graph.input) <= taken:
        return
    function = get_concrete_fn(model, signature).get_concrete_function(*signature)
    resource = require("tensorflow").resource
    captured = {inner.name: outer.numpy() for outer, inner in function.graph.captures if outer.dtype != resource}
    extra = [value for value in proto.graph.input if value.name in captured]
    if len(proto.graph.input) - len(extra) != taken:
        raise ModelLoadError(f"Keras model '{model.name}': its ONNX export takes {len(proto.graph.input)} inputs where "
                             f"the model takes {taken}, and lowbit cannot bind the others to the model's values")
    for value in extra:
        proto.graph.initializer.append(numpy_helper.from_array(captured[value.name], value.name))
        proto.graph.input.remove(value)


def _check_ops(proto: onnx.ModelProto, what: str, layers: set[str]) -> None:
    """ModelLoadError naming the layer (of ``layers``, else the node) whose TensorFlow op tf2onnx left without an
    ONNX equivalent."""
    opsets = {o.domain: o.version for o in proto.opset_import}
    for node in proto.graph.node:
        if not onnx.defs.has(node.op_type, max_inclusive_version=opsets.get(node.domain, 1), domain=node.domain):
            raise ModelLoadError(f"{what}: layer '{_layer_of(node.name, layers)}' uses TensorFlow op {node.op_type}, "
                                 f"which has no ONNX equivalent: express the layer with other operations")


def _layer_of(node_name: str, names: set[str]) -> str:
    """The layer a converted node came from: the scope of its name that is one of ``names``, else the node's name."""
    for scope in node_name.split("/"):
        for candidate in (scope, re.sub(r"_\d+$", "", scope)):
            if candidate in names:
                return candidate
    return node_name


def _load_keras_file(keras, path: Path):
    if not path.is_file():
        raise ModelLoadError(f"Keras model '{path}' not found")
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as e:  # a damaged zip, an unknown custom layer, a newer format
        raise ModelLoadError(f"Keras model '{path}' could not be loaded: {first_line(e)}") from None


def _saved_model_to_onnx(path: Path) -> onnx.ModelProto:
    """A SavedModel's serving signature as ONNX, through tf2onnx."""
    tf = require("tensorflow")
    tf2onnx = require("tf2onnx")
    try:
        loaded = tf.saved_model.load(str(path))  # held: the signature reads its variables
        served = loaded.signatures["serving_default"]
        specs = served.structured_input_signature[1]
        names = sorted(specs)
        function = tf.function(lambda *values: served(**dict(zip(names, values))),
                               input_signature=[specs[name] for name in names])
        proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature)
    except Exception as e:
        raise ModelLoadError(f"SavedModel '{path}' could not be converted to ONNX: {first_line(e)}") from None
    _check_ops(proto, f"SavedModel '{path}'", set())
    return proto
