"""Read and set ONNX node attributes by name."""

from __future__ import annotations

import onnx
from onnx import helper


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
