"""Blocks of a torch.fx graph (``lowbit.graph.blocks`` over its view) and a GraphModule running one."""

from __future__ import annotations

from torch import fx

from lowbit.graph.blocks import Block, graph_blocks
from lowbit.torch.graph_view import fx_view


def fx_blocks(graph_module: fx.GraphModule, layers: set[str], max_layers: int) -> list[Block]:
    """The blocks of ``graph_module`` whose layers are the calls of the modules named in ``layers``."""
    return graph_blocks(fx_view(graph_module), lambda op: op.module if op.module in layers else None, max_layers)


def block_nodes(graph_module: fx.GraphModule, block: Block) -> tuple[fx.Node, int, int]:
    """The block's input node, and the graph positions of its first op and of its output node."""
    index = {node.name: position for position, node in enumerate(graph_module.graph.nodes)}
    nodes = list(graph_module.graph.nodes)
    return nodes[index[block.input]], index[block.ops[0]], index[block.output]


def block_module(graph_module: fx.GraphModule, block: Block) -> fx.GraphModule:
    """A GraphModule sharing ``graph_module``'s submodules that maps the block's input to its output."""
    nodes = {node.name: node for node in graph_module.graph.nodes}
    graph = fx.Graph()
    env = {nodes[block.input]: graph.placeholder("block_input")}

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:
            env[node] = graph.node_copy(node, lookup)
        return env[node]

    for name in block.ops:
        lookup(nodes[name])
    graph.output(env[nodes[block.output]])
    return fx.GraphModule(graph_module, graph)
