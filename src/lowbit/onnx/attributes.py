"""Read and set ONNX node attributes by name."""

from __future__ import annotations

import math

import onnx
from onnx import helper, numpy_helper


def attribute(node: onnx.NodeProto, name: str, default):
    """The value of ``node``'s attribute ``name``, or ``default`` when it is absent."""
    for item in node.attribute:
        if item.name == name:
            return helper.get_attribute_value(item)
    return default


def set_attributes(node: onnx.NodeProto, **values) -> None:
    """Set (replace or add) ``node``'s attributes."""
    for item in [a for a in node.attribute if a.name in values]:
        node.attribute.remove(item)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in values.items())


def clip_bounds(initializers: dict, node: onnx.NodeProto) -> tuple[float, float]:
    """A Clip node's (min, max): from its inputs (opset 11+) or attributes; ±inf where absent, NaN
    where an input is not a constant."""
    bounds = [attribute(node, "min", -math.inf), attribute(node, "max", math.inf)]
    for index in (1, 2):
        if len(node.input) > index and node.input[index]:
            tensor = initializers.get(node.input[index])
            bounds[index - 1] = math.nan if tensor is None else float(numpy_helper.to_array(tensor).reshape(-1)[0])
    return bounds[0], bounds[1]


def reduce_axes(node: onnx.NodeProto, constant) -> list[int] | None:
    """The axes a Reduce* node reduces over: its axes input (``constant(name)`` gives its value, or None when it is
    computed) or its attribute; None where neither is known."""
    if len(node.input) > 1 and node.input[1]:
        axes = constant(node.input[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    return attribute(node, "axes", None)
