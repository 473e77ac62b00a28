"""Blocks for block-wise reconstruction (Li et al. 2021, BRECQ): spans of a graph view's ops that read
one value and leave one value (the graph cut where a single computed value is live), a few layers each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lowbit.graph.view import GraphView, Op


@dataclass(frozen=True)
class Block:
    """``ops`` (names, in order) read only ``input`` from before them, and only ``output`` is read
    after them; ``layers`` are the layers they call (as the front end names them)."""

    ops: tuple[str, ...]
    input: str
    output: str
    layers: tuple[str, ...]


def graph_blocks(view: GraphView, layer_of: Callable[[Op], str | None], max_layers: int) -> list[Block]:
    """Single-input single-output spans, consecutive ones merged while a block calls at most ``max_layers``
    layers; a span calling none joins the block before it (so a block ends after its activations)."""
    blocks: list[tuple[int, Block]] = []  # (stop, block)
    for start, stop, span in _spans(view, layer_of):
        previous = blocks[-1][1] if blocks else None
        if previous is not None and blocks[-1][0] == start and (
                not span.layers or not previous.layers or len(previous.layers) + len(span.layers) <= max_layers):
            merged = Block(previous.ops + span.ops, previous.input, span.output, previous.layers + span.layers)
            blocks[-1] = (stop, merged)
        else:
            blocks.append((stop, span))
    return [block for _, block in blocks if block.layers]


def rounding_units(blocks: list[Block] | None, names: list[str], max_layers: int) -> list[tuple[tuple[str, ...], Block | None]]:
    """What to optimise together, in ``names``' order: (layers, block), or (one layer, None) for the
    layers no block of at most ``max_layers`` layers covers (all of them where ``blocks`` is None)."""
    wanted, units, covered = set(names), [], set()
    for block in blocks or ():
        kept = tuple(name for name in block.layers if name in wanted)
        if kept and len(block.layers) <= max_layers:
            units.append((kept, block))
            covered.update(kept)
    position = {name: index for index, name in enumerate(names)}
    units += [((name,), None) for name in names if name not in covered]
    return sorted(units, key=lambda unit: position[unit[0][0]])


def _spans(view: GraphView, layer_of) -> list[tuple[int, int, Block]]:
    """(start, stop, span) between consecutive positions where exactly one computed value is live."""
    ops = view.ops
    last_use = {value: -1 for value in view.inputs}
    for index, op in enumerate(ops):
        for value in (*op.inputs, *op.also_reads):
            if value:
                last_use[value] = index
        for value in op.outputs:
            last_use.setdefault(value, -1)
    for value in view.outputs:
        last_use[value] = len(ops)
    cuts = []
    live = {value for value in view.inputs if last_use[value] >= 0}
    for position in range(len(ops) + 1):  # values live before op ``position``
        if position:
            live.update(value for value in ops[position - 1].outputs if value and last_use[value] >= position)
            live = {value for value in live if last_use[value] >= position}
        if len(live) == 1:
            cuts.append((position, next(iter(live))))
    spans = []
    for (start, first), (stop, last) in zip(cuts, cuts[1:]):
        if last != first:
            members = ops[start:stop]
            layers = tuple(name for name in map(layer_of, members) if name is not None)
            spans.append((start, stop, Block(tuple(op.name for op in members), first, last, layers)))
    return spans
