"""Ops Keras's torch and JAX exports write around a convolution, folded into it: per-channel Add/Sub/Mul/Div after
it (its bias and BatchNorm, after a transpose to channels last or not) into its weight and bias, and a zero Pad
before it (also one whose amounts the graph computes from the input's shape) into its pads."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from lowbit.onnx.attributes import attribute, set_attributes
from lowbit.qdq.graph_index import GraphIndex, remove_unused
from lowbit.runtime import session

_AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


def fold_channel_affines(model: onnx.ModelProto) -> int:
    """Fold each run of Add/Sub/Mul/Div by per-channel constants that follows a Conv (directly, or after a
    Transpose to channels last) into the Conv's weight and bias (in place); returns how many ops it removed."""
    index = GraphIndex(model.graph)
    removed: set[int] = set()
    constant_parameters = lambda node: all(name in index.initializers for name in node.input[1:] if name)
    for conv in [n for n in model.graph.node if n.op_type == "Conv" and constant_parameters(n)]:
        weight_shape = numpy_helper.to_array(index.initializers[conv.input[1]]).shape
        transpose = _sole_reader(index, conv.output[0])
        channels_last = transpose is not None and transpose.op_type == "Transpose" and _moves_channels_last(transpose)
        start = transpose.output[0] if channels_last else conv.output[0]
        channel_shape = (weight_shape[0],) if channels_last else (weight_shape[0], *[1] * (len(weight_shape) - 2))
        scale, shift, current, chain = np.ones(weight_shape[0]), np.zeros(weight_shape[0]), start, []
        while (node := _sole_reader(index, current)) is not None and node.op_type in _AFFINE_OPS:
            constant = _constant_operand(node, current, index.initializers, channel_shape)
            if constant is None:
                break
            scale, shift = _applied(node.op_type, constant, scale, shift)
            chain.append(node)
            current = node.output[0]
        if chain:
            _set_weight_and_bias(model, conv, index.initializers, scale, shift)
            _rewire(model, current, start)
            removed.update(id(n) for n in chain)
    return _drop(model, removed)


def pads_into_convs(model: onnx.ModelProto) -> int:
    """Fold each zero Pad of only spatial axes that a Conv alone reads (directly or through a Transpose to channels
    first) into the Conv's pads, so the Conv reads its quantized input as the runtime's integer kernel does;
    returns how many were folded."""
    index = GraphIndex(model.graph)
    folded = set()
    for pad in [n for n in model.graph.node if n.op_type == "Pad"]:
        reader = _sole_reader(index, pad.output[0])
        transpose = reader if reader is not None and reader.op_type == "Transpose" else None
        conv = _sole_reader(index, transpose.output[0]) if transpose is not None else reader
        amounts = _zero_pad_amounts(pad, index)
        if conv is None or conv.op_type != "Conv" or amounts is None or \
                attribute(conv, "auto_pad", b"NOTSET") not in (b"", b"NOTSET"):
            continue
        rank = len(amounts) // 2
        perm = attribute(transpose, "perm", None) if transpose is not None else None
        if transpose is not None and perm != [0, rank - 1, *range(1, rank - 1)]:
            continue
        begins, ends = amounts[:rank], amounts[rank:]
        if perm is not None:
            begins, ends = [begins[p] for p in perm], [ends[p] for p in perm]
        if any(begins[:2]) or any(ends[:2]):
            continue
        current = attribute(conv, "pads", [0] * (2 * (rank - 2)))
        set_attributes(conv, pads=[c + a for c, a in zip(current, [*begins[2:], *ends[2:]])])
        (transpose if transpose is not None else conv).input[0] = pad.input[0]
        folded.add(id(pad))
    return _drop(model, folded)


def static_pad_amounts(model: onnx.ModelProto) -> None:
    """Pad amounts the graph computes from tensor shapes ("same" padding of a strided convolution) become constants
    where they come out alike for batches of 1 and 2: only the image size decides them (in place)."""
    index = GraphIndex(model.graph)
    computed = [n for n in model.graph.node if n.op_type == "Pad" and len(n.input) > 1 and n.input[1]
                and index.constant(n.input[1]) is None]
    feeds = [_zero_inputs(model, batch) for batch in (1, 2)]
    if not computed or None in feeds:
        return
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    names = list(dict.fromkeys(pad.input[1] for pad in computed))
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    run = session(probe.SerializeToString())
    amounts = [dict(zip(names, run.run(names, feed))) for feed in feeds]
    for pad in computed:
        small, large = (values[pad.input[1]] for values in amounts)
        if np.array_equal(small, large):
            constant = f"{pad.input[1]}.static"
            if constant not in index.initializers:
                model.graph.initializer.append(numpy_helper.from_array(small, constant))
                index.initializers[constant] = model.graph.initializer[-1]
            pad.input[1] = constant
    remove_unused(model.graph)


def _zero_inputs(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray] | None:
    """Zeros for every graph input with ``batch`` as its one free (first) size, or None where another size is free."""
    feeds = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        sizes = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if None in sizes[1:]:
            return None
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = np.zeros([batch if s is None else s for s in sizes], dtype)
    return feeds


def _zero_pad_amounts(pad: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    """A Pad's amounts (begins, then ends, one per axis) where it pads with zeros in constant mode, else None."""
    mode = attribute(pad, "mode", b"constant")
    value = index.constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
    amounts = index.constant(pad.input[1]) if len(pad.input) > 1 else None
    if mode != b"constant" or value is None or np.any(np.asarray(value) != 0) or amounts is None or \
            (len(pad.input) > 3 and pad.input[3]):
        return None
    return [int(a) for a in np.ravel(amounts)]


def _sole_reader(index: GraphIndex, name: str) -> onnx.NodeProto | None:
    """The one node reading ``name``, if only one does."""
    readers = index.consumers.get(name, [])
    return readers[0] if len(readers) == 1 else None


def _drop(model: onnx.ModelProto, nodes: set[int]) -> int:
    """Remove the nodes (by id) and whatever only they read; returns how many nodes."""
    kept = [n for n in model.graph.node if id(n) not in nodes]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    remove_unused(model.graph)
    return len(nodes)


def _moves_channels_last(transpose: onnx.NodeProto) -> bool:
    perm = attribute(transpose, "perm", None)
    return perm is not None and len(perm) >= 3 and perm == [0, *range(2, len(perm)), 1]


def _constant_operand(node: onnx.NodeProto, current: str, initializers: dict,
                      channel_shape: tuple[int, ...]) -> np.ndarray | None:
    """The per-channel constant ``node`` combines ``current`` with (either side of Add and Mul, the right side of
    Sub and Div), else None."""
    if node.input[0] == current:
        other = node.input[1]
    elif node.op_type in ("Add", "Mul") and node.input[1] == current:
        other = node.input[0]
    else:
        return None
    return _per_channel(initializers.get(other), channel_shape)


def _per_channel(tensor: onnx.TensorProto | None, channel_shape: tuple[int, ...]) -> np.ndarray | None:
    """The constant as one float64 value per channel (a scalar broadcast to all), where it broadcasts as
    ``channel_shape`` (channels, then ones) against the output; else None."""
    if tensor is None or tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        return None
    value = numpy_helper.to_array(tensor).astype(np.float64)
    channels = channel_shape[0]
    if value.size == 1:
        return np.full(channels, value.reshape(()))
    squeezed = value.shape[len(value.shape) - len(channel_shape):] if value.ndim >= len(channel_shape) else None
    if squeezed == channel_shape and value.size == channels:
        return value.reshape(channels)
    return None


def _applied(op_type: str, constant: np.ndarray, scale: np.ndarray, shift: np.ndarray):
    """(scale, shift) of x → op(scale · x + shift, constant)."""
    if op_type == "Add":
        return scale, shift + constant
    if op_type == "Sub":
        return scale, shift - constant
    if op_type == "Mul":
        return scale * constant, shift * constant
    return scale / constant, shift / constant


def _set_weight_and_bias(model: onnx.ModelProto, conv: onnx.NodeProto, initializers: dict, scale: np.ndarray,
                         shift: np.ndarray) -> None:
    """Give ``conv`` new initializers for scale · W and scale · b + shift (shared tensors stay as they were)."""
    weight = numpy_helper.to_array(initializers[conv.input[1]])
    bias = numpy_helper.to_array(initializers[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] else 0.0
    folded_weight = (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype)
    folded_bias = (bias * scale + shift).astype(weight.dtype)
    names = []
    for role, value in (("weight", folded_weight), ("bias", folded_bias)):
        name = f"{conv.name or conv.output[0]}.folded_{role}"
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        names.append(name)
    del conv.input[1:]
    conv.input.extend(names)


def _rewire(model: onnx.ModelProto, old: str, new: str) -> None:
    """Readers of ``old`` read ``new``; where ``old`` is a graph output, ``new``'s producer writes it instead."""
    if old in {o.name for o in model.graph.output}:
        producer = next(n for n in model.graph.node if new in n.output)
        producer.output[list(producer.output).index(new)] = old
        return
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
