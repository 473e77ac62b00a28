"""Carry out a quantization plan: put Quantizer modules into a GraphModule."""

from __future__ import annotations

from torch import fx, nn

from lowbit.quant.quantizer import Quantizer
from lowbit.target import PASSTHROUGH_OPS
from lowbit.torch.plan import QuantPoint, node_op_type
from lowbit.torch.weight_quantized import WeightQuantized

ACTIVATION_QUANTIZERS = "activation_quantizers"


def insert_quantizers(gm: fx.GraphModule, points: list[QuantPoint], scheme: str) -> dict[str, Quantizer]:
    """Insert one Quantizer per point (in place) and return them by key."""
    gm.add_module(ACTIVATION_QUANTIZERS, nn.ModuleDict())
    holder = gm.get_submodule(ACTIVATION_QUANTIZERS)
    nodes = {n.name: n for n in gm.graph.nodes}
    quantizers: dict[str, Quantizer] = {}
    for point in points:
        quantizer = Quantizer(point.spec, scheme)
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
    gm.graph.lint()
    gm.recompile()
    _link_bias_sources(gm)
    return quantizers


def _link_bias_sources(gm: fx.GraphModule) -> None:
    """Give each weight-quantized layer the quantizer of its input, looking through pass-through ops."""
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), WeightQuantized):
            continue
        source = node.args[0] if node.args else None
        # pass-through ops include modules (the Identity left by a folded BatchNorm, Dropout):
        # ONNX export drops them, so the QDQ bias grid uses the quantizer before them
        while (isinstance(source, fx.Node) and source.args and isinstance(source.args[0], fx.Node)
               and not (source.op == "call_module" and isinstance(gm.get_submodule(source.target), Quantizer))
               and node_op_type(gm, source) in PASSTHROUGH_OPS):
            source = source.args[0]
        if isinstance(source, fx.Node) and source.op == "call_module":
            found = gm.get_submodule(source.target)
            if isinstance(found, Quantizer):
                gm.get_submodule(node.target).link_input_quantizer(found)
