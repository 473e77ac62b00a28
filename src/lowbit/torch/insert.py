"""Carry out a quantization plan: put Quantizer modules into a GraphModule."""

from __future__ import annotations

from torch import fx, nn

from lowbit.quant.quantizer import Quantizer
from lowbit.quant.range_estimators import model_output_scheme
from lowbit.target import PASSTHROUGH_OPS
from lowbit.target.points import QuantPoint
from lowbit.torch.grid_follower import link_grid_follower
from lowbit.torch.integer_add import IntegerAdd
from lowbit.torch.integer_softmax import IntegerSoftmax
from lowbit.torch.graph_view import node_op_type
from lowbit.torch.module_graph import node_arg
from lowbit.torch.weight_quantized import WeightQuantized

ACTIVATION_QUANTIZERS = "activation_quantizers"
INTEGER_ADDS = "integer_adds"
INTEGER_SOFTMAXES = "integer_softmaxes"


def insert_quantizers(gm: fx.GraphModule, points: list[QuantPoint], scheme: str,
                      returned: set[str]) -> dict[str, Quantizer]:
    """Insert one Quantizer per point (in place) and return them by key; outputs of ``returned`` nodes
    (those the model returns) calibrate with the model-output scheme."""
    gm.add_module(ACTIVATION_QUANTIZERS, nn.ModuleDict())
    holder = gm.get_submodule(ACTIVATION_QUANTIZERS)
    nodes = {n.name: n for n in gm.graph.nodes}
    quantizers: dict[str, Quantizer] = {}
    for point in points:
        returns = point.role == "output" and point.node in returned
        quantizer = Quantizer(point.spec, model_output_scheme(scheme) if returns else scheme,
                              divide=point.role == "input")
        quantizers[point.key] = quantizer
        if point.role == "weight":
            layer = gm.get_submodule(point.module)
            gm.set_submodule(point.module, WeightQuantized(layer, quantizer))
            continue
        holder[point.key] = quantizer
        target = f"{ACTIVATION_QUANTIZERS}.{point.key}"
        if point.argument is None:
            node = nodes[point.node]
            with gm.graph.inserting_after(node):
                quantized = gm.graph.call_module(target, (node,))
            node.replace_all_uses_with(quantized, delete_user_cb=lambda user: user is not quantized)
        else:
            consumer, argument = nodes[point.node], nodes[point.argument]
            with gm.graph.inserting_before(consumer):
                quantized = gm.graph.call_module(target, (argument,))
            consumer.replace_input_with(argument, quantized)
    _link_bias_sources(gm)
    link_output_quantizers(gm)
    _emulate_integer_adds(gm)
    _emulate_integer_softmaxes(gm)
    return quantizers


def _called_module(gm: fx.GraphModule, node) -> nn.Module | None:
    """The module ``node`` calls, or None when it is not a call_module node."""
    return gm.get_submodule(node.target) if isinstance(node, fx.Node) and node.op == "call_module" else None


def _link_bias_sources(gm: fx.GraphModule) -> None:
    """Give each weight-quantized layer the quantizer of its input, looking through pass-through ops."""
    for node in gm.graph.nodes:
        layer = _called_module(gm, node)
        if not isinstance(layer, WeightQuantized):
            continue
        source = node.args[0] if node.args else None
        # pass-through ops include modules (the Identity left by a folded BatchNorm, Dropout):
        # ONNX export drops them, so the QDQ bias grid uses the quantizer before them; onnxruntime
        # fuses DequantizeLinear into the layer's integer kernel across some of them only
        direct = True
        while (isinstance(source, fx.Node) and source.args and isinstance(source.args[0], fx.Node)
               and not isinstance(_called_module(gm, source), Quantizer)
               and node_op_type(gm, source) in PASSTHROUGH_OPS):
            direct = direct and _fused_across(gm, source)
            source = source.args[0]
        found = _called_module(gm, source)
        if isinstance(found, Quantizer):
            layer.link_input_quantizer(found, direct=direct)


_FUSED_FOLLOWERS = frozenset({"Identity", "Dropout", "Relu", "Clip"})
_FUSED_ACROSS = frozenset({"Identity", "Dropout", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "MaxPool",
                           "Pad", "Slice"})
"""Pass-through ops onnxruntime (1.32, CPU) looks through when fusing DequantizeLinear into an integer
Conv/Gemm/MatMul, as measured; Flatten is not: the export writes Flatten from dim 1 as Reshape (`_fused_across`)."""


def _fused_across(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether onnxruntime fuses a DequantizeLinear across ``node`` (a Flatten from dimension 1 to the
    end is exported as Reshape)."""
    kind = node_op_type(gm, node)
    if kind == "Flatten":
        return _flatten_dims(gm, node) == (1, -1)
    return kind in _FUSED_ACROSS


def _flatten_dims(gm: fx.GraphModule, node: fx.Node) -> tuple:
    """(start_dim, end_dim) of a Flatten node, whether a module, torch.flatten or Tensor.flatten."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        return module.start_dim, module.end_dim
    return node_arg(node, 1, "start_dim", 0), node_arg(node, 2, "end_dim", -1)


def link_output_quantizers(gm: fx.GraphModule) -> None:
    """Give each weight-quantized layer the quantizer ending its fused group (through Identity, Dropout, Relu,
    Clip with a single reader each), as onnxruntime fuses them into one kernel; each Relu/Clip module between
    skips itself on that quantizer's grid when it is the identity there (replaced by a skipping copy)."""
    for node in gm.graph.nodes:
        layer = _called_module(gm, node)
        if not isinstance(layer, WeightQuantized):
            continue
        chain, current = [], node
        while len(current.users) == 1:
            (current,) = current.users
            quantizer = _called_module(gm, current)
            if isinstance(quantizer, Quantizer):
                layer.link_output_quantizer(quantizer)
                for follower in chain:
                    if follower.op == "call_module":
                        link_grid_follower(gm, follower.target, quantizer)
                break
            if node_op_type(gm, current) not in _FUSED_FOLLOWERS:
                break
            chain.append(current)


def _emulate_integer_adds(gm: fx.GraphModule) -> None:
    """Replace by IntegerAdd each Add of two quantized tensors whose only reader is a quantizer (directly or
    through a Relu, which onnxruntime drops before a quantizer whose grid starts at zero)."""
    gm.add_module(INTEGER_ADDS, nn.ModuleDict())
    holder = gm.get_submodule(INTEGER_ADDS)
    for node in list(gm.graph.nodes):
        if node_op_type(gm, node) != "Add" or len(node.args) != 2 or node.kwargs or len(node.users) != 1:
            continue
        sources = [source_quantizer(gm, a) for a in node.args]
        output, through_relu = _reader_quantizer(gm, next(iter(node.users)))
        if None in sources or output is None:
            continue
        holder[node.name] = IntegerAdd(sources[0], sources[1], output, through_relu=through_relu)
        with gm.graph.inserting_before(node):
            replacement = gm.graph.call_module(f"{INTEGER_ADDS}.{node.name}", node.args)
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)


def _emulate_integer_softmaxes(gm: fx.GraphModule) -> None:
    """Replace each Softmax read straight from a quantizer and read only by one (the pattern onnxruntime
    fuses into QLinearSoftmax) by IntegerSoftmax, then recompile ``gm`` (after all of insert_quantizers' edits)."""
    gm.add_module(INTEGER_SOFTMAXES, nn.ModuleDict())
    holder = gm.get_submodule(INTEGER_SOFTMAXES)
    for node in list(gm.graph.nodes):
        dim = _softmax_dim(gm, node)
        if dim is None or len(node.users) != 1 or not isinstance(node.args[0], fx.Node):
            continue
        source, reader = node.args[0], next(iter(node.users))
        quantizers = [_called_module(gm, n) for n in (source, reader)]
        if not all(isinstance(q, Quantizer) for q in quantizers):
            continue
        holder[node.name] = IntegerSoftmax(quantizers[0], quantizers[1], dim)
        with gm.graph.inserting_before(node):
            replacement = gm.graph.call_module(f"{INTEGER_SOFTMAXES}.{node.name}", (source,))
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def _softmax_dim(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """The axis of a Softmax node (module, function or method) given as a plain int, else None."""
    if node_op_type(gm, node) != "Softmax":
        return None
    if node.op == "call_module":
        dim = getattr(gm.get_submodule(node.target), "dim", None)
    else:  # torch.softmax(x, dim), F.softmax(x, dim, _stacklevel, dtype), aten._softmax(x, dim, half_to_float)
        dim = node_arg(node, 1, "dim")
        if node.kwargs.get("dtype") is not None or (len(node.args) > 2 and node.args[2] is True):
            return None
    return dim if isinstance(dim, int) else None


def source_quantizer(gm: fx.GraphModule, node) -> Quantizer | None:
    """The quantizer whose grid ``node`` carries, looking back through ops onnxruntime fuses across."""
    while isinstance(node, fx.Node):
        module = _called_module(gm, node)
        if isinstance(module, Quantizer):
            return module
        if not _fused_across(gm, node):
            return None
        node = node.args[0] if node.args else None
    return None


def _reader_quantizer(gm: fx.GraphModule, node) -> tuple[Quantizer | None, bool]:
    """The quantizer reached from ``node`` forward through Identity/Dropout and at most one Relu, each
    the only reader of the one before; returns (quantizer or None, whether a Relu was crossed)."""
    crossed_relu = False
    while isinstance(node, fx.Node):
        module = _called_module(gm, node)
        if isinstance(module, Quantizer):
            return module, crossed_relu
        kind = node_op_type(gm, node)
        if kind == "Relu" and not crossed_relu:
            crossed_relu = True
        elif kind not in ("Identity", "Dropout"):
            return None, False
        node = next(iter(node.users)) if len(node.users) == 1 else None
    return None, False
