"""Blocks of a torch.fx graph for block-wise reconstruction: spans of nodes that read one value and
leave one value (the graph is cut where a single computed value is live), grouped so that each holds
a few weight layers, and a GraphModule that runs one span on its input."""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx


@dataclass(frozen=True)
class GraphBlock:
    """Nodes ``start`` to ``stop`` − 1 of the graph: they read only ``input`` (and attributes) from
    before the span, and only ``output`` is read after it; ``layers`` are the weight layers called."""

    start: int
    stop: int
    input: fx.Node
    output: fx.Node
    layers: tuple[str, ...]


def graph_blocks(graph_module: fx.GraphModule, layers: set[str], max_layers: int) -> list[GraphBlock]:
    """The graph's single-input single-output spans, consecutive spans merged while the merged block
    calls at most ``max_layers`` of ``layers`` (a span calling more stays alone); a span calling
    none joins the block before it, so that a block ends after the activation and quantizer that
    follow its last layer."""
    blocks: list[GraphBlock] = []
    for span in _spans(graph_module, layers):
        previous = blocks[-1] if blocks else None
        if previous is not None and previous.stop == span.start and (
                not span.layers or not previous.layers or len(previous.layers) + len(span.layers) <= max_layers):
            blocks[-1] = GraphBlock(previous.start, span.stop, previous.input, span.output,
                                    previous.layers + span.layers)
        else:
            blocks.append(span)
    return [block for block in blocks if block.layers]


def block_module(graph_module: fx.GraphModule, block: GraphBlock) -> fx.GraphModule:
    """A GraphModule sharing ``graph_module``'s submodules that maps the block's input to its output."""
    nodes = list(graph_module.graph.nodes)
    graph = fx.Graph()
    env = {block.input: graph.placeholder("block_input")}

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:
            env[node] = graph.node_copy(node, lookup)
        return env[node]

    for node in nodes[block.start:block.stop]:
        lookup(node)
    graph.output(env[block.output])
    return fx.GraphModule(graph_module, graph)


def _spans(graph_module: fx.GraphModule, layers: set[str]) -> list[GraphBlock]:
    """Consecutive spans between the positions where exactly one computed value is live."""
    nodes = list(graph_module.graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    last_use = {node: max((index[user] for user in node.users), default=index[node]) for node in nodes}
    end = next(i for i, node in enumerate(nodes) if node.op == "output")
    dying: dict[int, list[fx.Node]] = {}
    for node in nodes:
        dying.setdefault(last_use[node], []).append(node)
    cuts, live = [], set()
    for position in range(1, end + 1):  # live before node ``position``: index < position <= last use
        produced = nodes[position - 1]
        if produced.op != "get_attr" and last_use[produced] >= position:
            live.add(produced)
        live.difference_update(dying.get(position - 1, ()))
        if len(live) == 1:
            cuts.append((position, next(iter(live))))
    spans = []
    for (start, first), (stop, last) in zip(cuts, cuts[1:]):
        if last is first:
            continue
        called = tuple(node.target for node in nodes[start:stop] if node.op == "call_module" and node.target in layers)
        spans.append(GraphBlock(start, stop, first, last, called))
    return spans
