"""The ONNX graph Keras's torch and JAX backends export, made what a Conv graph should be: each convolution there
runs between two transposes (NHWC → NCHW → NHWC) with its bias and BatchNorm as per-channel Add/Sub/Mul after it,
its padding as a Pad before, ReLU6 maybe as Max and Min. Those fold into the convolution, activations become Relu
and Clip next to it, onnxruntime's basic optimizer cancels the transposes and drops the casts, and a spatial
ReduceMean becomes GlobalAveragePool: the graph quantizes as the runtime's integer kernels run it (Conv → Relu
fused, an integer mean)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from lowbit.qdq.graph_index import GraphIndex, remove_unused

_AFFINE_OPS = ("Add", "Sub", "Mul", "Div")


def cleaned(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the convolutions' per-channel ops and pads folded in, its transposes cancelled and its spatial
    means as global pools."""
    model = basic_optimized(model)
    static_pad_amounts(model)
    min_max_as_clips(model)
    if fold_channel_affines(model) + activations_before_transposes(model) + pads_into_convs(model):
        model = basic_optimized(model)
    spatial_means_as_global_pools(model)
    return model


def basic_optimized(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` after onnxruntime's basic graph optimizations (standard ONNX ops only: constant folding,
    transpose cancelling, Conv+Add fusion), with opset imports no node uses dropped."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    used = {node.domain for node in optimized.graph.node} | {""}
    kept = [o for o in optimized.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del optimized.opset_import[:]
    optimized.opset_import.extend(kept)
    return optimized


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
    run = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
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


def fold_channel_affines(model: onnx.ModelProto) -> int:
    """Fold each run of Add/Sub/Mul/Div by per-channel constants that follows a Conv (directly, or after a
    Transpose to channels last) into the Conv's weight and bias (in place); returns how many ops it removed."""
    index = GraphIndex(model.graph)
    sole_reader = lambda name: readers[0] if len(readers := index.consumers.get(name, [])) == 1 else None
    removed: set[int] = set()
    constant_parameters = lambda node: all(name in index.initializers for name in node.input[1:] if name)
    for conv in [n for n in model.graph.node if n.op_type == "Conv" and constant_parameters(n)]:
        weight_shape = numpy_helper.to_array(index.initializers[conv.input[1]]).shape
        transpose = sole_reader(conv.output[0])
        channels_last = transpose is not None and transpose.op_type == "Transpose" and _moves_channels_last(transpose)
        start = transpose.output[0] if channels_last else conv.output[0]
        channel_shape = (weight_shape[0],) if channels_last else (weight_shape[0], *[1] * (len(weight_shape) - 2))
        scale, shift, current, chain = np.ones(weight_shape[0]), np.zeros(weight_shape[0]), start, []
        while (node := sole_reader(current)) is not None and node.op_type in _AFFINE_OPS:
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
    kept = [n for n in model.graph.node if id(n) not in removed]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    remove_unused(model.graph)
    return len(removed)


def min_max_as_clips(model: onnx.ModelProto) -> None:
    """Each Max by a scalar constant that a Min by a larger one alone reads (or the other way round) becomes one Clip,
    and a Max by 0 on its own a Relu: the activations the runtime fuses into a convolution (in place)."""
    index = GraphIndex(model.graph)
    bound = lambda node: _scalar_operand(node, index)
    replaced, nodes = set(), []
    for node in model.graph.node:
        if id(node) in replaced:
            continue
        if node.op_type not in ("Max", "Min") or bound(node) is None:
            nodes.append(node)
            continue
        readers = index.consumers.get(node.output[0], [])
        partner = readers[0] if len(readers) == 1 and {readers[0].op_type, node.op_type} == {"Max", "Min"} else None
        if partner is not None and bound(partner) is not None:
            low, high = sorted((bound(node), bound(partner)))
            names = [f"{partner.output[0]}.min", f"{partner.output[0]}.max"]
            model.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), n)
                                           for v, n in zip((low, high), names))
            nodes.append(onnx.helper.make_node("Clip", [_variable_operand(node, index), *names], [partner.output[0]],
                                               name=partner.name))
            replaced.add(id(partner))
        elif node.op_type == "Max" and bound(node) == 0:
            nodes.append(onnx.helper.make_node("Relu", [_variable_operand(node, index)], [node.output[0]],
                                               name=node.name))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    remove_unused(model.graph)


def _scalar_operand(node: onnx.NodeProto, index: GraphIndex) -> float | None:
    """The scalar constant of a two-input Max or Min whose other input is computed, else None."""
    if len(node.input) != 2:
        return None
    values = [index.constant(name) for name in node.input]
    known = [v for v in values if v is not None]
    return float(known[0].reshape(())) if len(known) == 1 and known[0].size == 1 else None


def _variable_operand(node: onnx.NodeProto, index: GraphIndex) -> str:
    return next(name for name in node.input if index.constant(name) is None)


def activations_before_transposes(model: onnx.ModelProto) -> int:
    """Swap each Transpose read only by a Relu or Clip with that activation (they commute), so a convolution's
    activation follows it directly; returns how many were swapped."""
    swapped = 0
    while (pair := _transpose_then_activation(model)) is not None:
        transpose, activation = (model.graph.node[i] for i in pair)
        source, between, result = transpose.input[0], transpose.output[0], activation.output[0]
        activation.input[0], activation.output[0] = source, between
        transpose.input[0], transpose.output[0] = between, result
        moved = onnx.NodeProto()
        moved.CopyFrom(transpose)
        transpose.CopyFrom(activation)
        activation.CopyFrom(moved)
        swapped += 1
    return swapped


def _transpose_then_activation(model: onnx.ModelProto) -> tuple[int, int] | None:
    """Positions of a Transpose and the Relu or Clip that alone reads it (not a graph output), if any."""
    index = GraphIndex(model.graph)
    outputs = {o.name for o in model.graph.output}
    position = {id(node): i for i, node in enumerate(model.graph.node)}
    for i, node in enumerate(model.graph.node):
        readers = index.consumers.get(node.output[0], []) if node.op_type == "Transpose" else []
        if len(readers) == 1 and readers[0].op_type in ("Relu", "Clip") and node.output[0] not in outputs:
            return i, position[id(readers[0])]
    return None


def pads_into_convs(model: onnx.ModelProto) -> int:
    """Fold each zero Pad of only spatial axes that a Conv alone reads (directly or through a Transpose to channels
    first) into the Conv's pads, so the Conv reads its quantized input as the runtime's integer kernel does;
    returns how many were folded."""
    index = GraphIndex(model.graph)
    sole_reader = lambda name: readers[0] if len(readers := index.consumers.get(name, [])) == 1 else None
    folded = set()
    for pad in [n for n in model.graph.node if n.op_type == "Pad"]:
        reader = sole_reader(pad.output[0])
        transpose = reader if reader is not None and reader.op_type == "Transpose" else None
        conv = sole_reader(transpose.output[0]) if transpose is not None else reader
        amounts = _zero_pad_amounts(pad, index)
        if conv is None or conv.op_type != "Conv" or amounts is None or \
                any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in conv.attribute):
            continue
        rank = len(amounts) // 2
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None) if transpose else None
        if transpose is not None and perm != [0, rank - 1, *range(1, rank - 1)]:
            continue
        begins, ends = amounts[:rank], amounts[rank:]
        if perm is not None:
            begins, ends = [begins[p] for p in perm], [ends[p] for p in perm]
        if any(begins[:2]) or any(ends[:2]):
            continue
        current = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0] * (2 * (rank - 2)))
        merged = [c + a for c, a in zip(current, [*begins[2:], *ends[2:]])]
        kept = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*kept, onnx.helper.make_attribute("pads", merged)])
        (transpose if transpose is not None else conv).input[0] = pad.input[0]
        folded.add(id(pad))
    kept_nodes = [n for n in model.graph.node if id(n) not in folded]
    del model.graph.node[:]
    model.graph.node.extend(kept_nodes)
    remove_unused(model.graph)
    return len(folded)


def _zero_pad_amounts(pad: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    """A Pad's amounts (begins, then ends, one per axis) where it pads with zeros in constant mode, else None."""
    mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
    value = index.constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
    amounts = index.constant(pad.input[1]) if len(pad.input) > 1 else None
    if mode != b"constant" or value is None or np.any(np.asarray(value) != 0) or amounts is None or \
            (len(pad.input) > 3 and pad.input[3]):
        return None
    return [int(a) for a in np.ravel(amounts)]


def spatial_means_as_global_pools(model: onnx.ModelProto) -> None:
    """Each ReduceMean over the two spatial axes of an NCHW tensor becomes GlobalAveragePool (then Flatten where it
    drops those axes): the op onnxruntime and LiteRT run as an integer mean (in place)."""
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    ranks.update({v.name: len(v.type.tensor_type.shape.dim) for v in model.graph.input})
    index, nodes = GraphIndex(model.graph), []
    for node in model.graph.node:
        axes = _reduced_axes(node, index) if node.op_type == "ReduceMean" and ranks.get(node.input[0]) == 4 else None
        if axes != [2, 3]:
            nodes.append(node)
            continue
        if next((a.i for a in node.attribute if a.name == "keepdims"), 1):
            nodes.append(onnx.helper.make_node("GlobalAveragePool", [node.input[0]], [node.output[0]], name=node.name))
            continue
        pooled = f"{node.output[0]}.pooled"
        nodes.append(onnx.helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name))
        nodes.append(onnx.helper.make_node("Flatten", [pooled], [node.output[0]], name=f"{node.name}.flatten", axis=1))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    remove_unused(model.graph)


def _reduced_axes(node: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    """The sorted axes (of a 4-D input) a ReduceMean averages over: its axes input or attribute."""
    axes = index.constant(node.input[1]) if len(node.input) > 1 and node.input[1] else \
        next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    return None if axes is None else sorted(int(a) % 4 for a in np.ravel(axes))


def _moves_channels_last(transpose: onnx.NodeProto) -> bool:
    perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
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
