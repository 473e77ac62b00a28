"""Read an ONNX model (path or ModelProto), check it, and normalise it for quantization: weights held
in Constant nodes become initializers, and shapes are inferred."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from lowbit.errors import ModelLoadError, first_line

MIN_OPSET = 11
"""Oldest default-domain opset read: 11 settled the Resize, Pad and Clip signatures exporters use."""

QDQ_OPSET = 13
"""Oldest opset whose QuantizeLinear/DequantizeLinear take an ``axis`` (per-channel weights): older
models are converted to it on loading."""


def load_model(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """A checked copy of ``model`` with Constant-node tensors as initializers and inferred shapes."""
    proto = _read(Path(model)) if isinstance(model, (str, Path)) else copy.deepcopy(model)
    if not isinstance(proto, onnx.ModelProto):
        raise ModelLoadError(f"expected an ONNX file path or onnx.ModelProto, got {type(model).__name__}")
    try:
        return _normalised(proto)
    except UnicodeDecodeError:  # protobuf decodes strings lazily: a damaged file fails wherever one is read
        raise ModelLoadError("invalid ONNX model: a name or string in it is not valid UTF-8 "
                             "(is the file damaged?)") from None


def _normalised(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` at a QDQ opset, Constant tensors as initializers, nodes named, shapes inferred, checked."""
    proto = _with_qdq_opset(proto)
    constants_to_initializers(proto)
    name_nodes(proto)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except onnx.shape_inference.InferenceError as e:
        raise ModelLoadError(f"ONNX shape inference failed: {first_line(e)}") from None
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ModelLoadError(f"invalid ONNX model: {first_line(e)}") from None
    return proto


def _read(path: Path) -> onnx.ModelProto:
    """The model at ``path`` with its external data, or one ModelLoadError naming what is wrong."""
    if not path.is_file():
        raise ModelLoadError(f"ONNX model '{path}' not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as e:
        raise ModelLoadError(f"'{path}' is not an ONNX model or is truncated ({first_line(e)})") from None
    if not proto.graph.node:
        raise ModelLoadError(f"'{path}' is not an ONNX model or is truncated (no graph nodes)")
    for tensor in [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]:
        location = next(e.value for e in tensor.external_data if e.key == "location")
        if not (path.parent / location).is_file():
            raise ModelLoadError(f"external data file '{location}' of tensor '{tensor.name}' not found "
                                 f"next to '{path}'")
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the external data of '{path}': {first_line(e)}") from None
    return proto


def _with_qdq_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` at opset QDQ_OPSET or newer (older ones converted: per-channel DequantizeLinear needs 13);
    ModelLoadError for an opset outside MIN_OPSET to what onnx knows, or naming the op if conversion fails."""
    versions = {o.domain: o.version for o in proto.opset_import}
    version, newest = versions.get("", versions.get("ai.onnx")), onnx.defs.onnx_opset_version()
    if version is None or not MIN_OPSET <= version <= newest:
        raise ModelLoadError(f"unsupported ONNX opset {version}: lowbit reads opsets {MIN_OPSET} to {newest} "
                             f"(convert with onnx.version_converter.convert_version)")
    if version >= QDQ_OPSET:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, QDQ_OPSET)
    except Exception as e:
        raise ModelLoadError(f"cannot raise this opset-{version} model to opset {QDQ_OPSET}, which "
                             f"per-channel QuantizeLinear/DequantizeLinear need: {first_line(e)}") from None


def name_nodes(proto: onnx.ModelProto) -> None:
    """Give every unnamed node (or one whose name an earlier node took) a unique name: quantizer keys
    and the techniques find nodes by name."""
    taken: set[str] = set()
    for index, node in enumerate(proto.graph.node):
        if not node.name or node.name in taken:
            base = node.name or f"{node.op_type}_{index}"
            node.name, suffix = base, 1
            while node.name in taken:
                node.name, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(node.name)


def constants_to_initializers(proto: onnx.ModelProto) -> None:
    """Move the tensors of top-level Constant nodes, and of Identity nodes reading an initializer (how
    exporters share equal tensors), into initializers of their own (in place)."""
    graph, kept = proto.graph, []
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        tensor = _constant_value(node) if node.op_type == "Constant" and node.domain in ("", "ai.onnx") else None
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(initializers[node.input[0]])
        if tensor is None:
            kept.append(node)
            continue
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        initializers[tensor.name] = graph.initializer[-1]
    if len(kept) < len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def _constant_value(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node produces, or None for sparse and string values (left as nodes)."""
    attribute = node.attribute[0]
    value = onnx.helper.get_attribute_value(attribute)
    if attribute.name == "value":
        return copy.deepcopy(value)
    if attribute.name in ("value_float", "value_floats"):
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32))
    if attribute.name in ("value_int", "value_ints"):
        return numpy_helper.from_array(np.asarray(value, dtype=np.int64))
    return None
