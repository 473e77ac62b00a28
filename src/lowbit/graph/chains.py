"""Cross-layer-equalization chains, once for every front end: layers whose output feeds only the next
layer, through nothing but ops that scaling per channel passes through."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from lowbit.graph.view import GraphView, Op

_LINEAR = ("Identity", "Dropout", "LeakyRelu")
"""Positive-homogeneous ops scaling passes through unchanged (besides Relu)."""


@dataclass
class Link:
    """What sits between two layers of a chain: Clip(0, 6) ops to become Relu, and whether a Relu
    (or such a Clip) is on the path."""

    relu6: list[Op] = field(default_factory=list)
    relu: bool = False


@dataclass
class Chain:
    """Layers in data-flow order and the links between consecutive ones."""

    layers: list[Op]
    links: list[Link]


def equalization_chains(view: GraphView) -> list[Chain]:
    """Maximal chains of Conv (ungrouped or depthwise) and Gemm layers with unshared weights and matching channels, each
    feeding only the next through Relu, LeakyRelu, Identity, Dropout or Clip(0, ∞ or 6), which becomes a Relu."""
    readers = Counter(op.weight for op in view.ops if op.weight is not None)
    layers = {op.outputs[0]: op for op in view.ops
              if op.type in ("Conv", "Gemm") and op.layer is not None and readers.get(op.weight) == 1
              and (op.layer.groups == 1 or op.layer.depthwise)}
    successor: dict[str, tuple[str, Link]] = {}
    for key, layer in layers.items():
        link, value = Link(), key
        while value not in view.outputs and len(view.consumers(value)) == 1:
            user = view.consumers(value)[0]
            if not user.inputs or user.inputs[0] != value or value in user.inputs[1:]:
                break
            following = layers.get(user.outputs[0])
            if following is not None:
                if following.layer.in_channels == layer.layer.out_channels:
                    successor[key] = (user.outputs[0], link)
                break
            step = _passes(view, user)
            if step is None:
                break
            if step == "relu6":
                link.relu6.append(user)
            link.relu = link.relu or step in ("relu", "relu6")
            value = user.outputs[0]
    targets = {following for following, _ in successor.values()}
    chains = []
    for start in [key for key in successor if key not in targets]:
        chain, key = Chain([layers[start]], []), start
        while key in successor:
            key, link = successor[key]
            chain.layers.append(layers[key])
            chain.links.append(link)
        chains.append(chain)
    return chains


def _passes(view: GraphView, op: Op) -> str | None:
    """How scaling passes through ``op``: "relu", "relu6" (a Clip(0, 6), to become a Relu), "linear",
    or None (it does not, or another of its outputs is read)."""
    if not op.outputs or any(v in view.outputs or view.consumers(v) for v in op.outputs[1:] if v):
        return None
    if op.type == "Relu":
        return "relu"
    if op.type in _LINEAR:
        return "linear"
    if op.type == "Clip" and op.clip is not None and op.clip[0] == 0:
        return {math.inf: "relu", 6: "relu6"}.get(op.clip[1])
    return None
