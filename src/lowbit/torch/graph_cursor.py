"""Run a torch.fx GraphModule on one call node by node, pausing before any node and resuming there
later, holding only the values later nodes still read."""

from __future__ import annotations

import copy
import inspect

import torch
from torch import fx
from torch.utils._pytree import tree_leaves, tree_map


class GraphCursor:
    """A paused run of ``graph_module`` on one call: ``run_to(i)`` runs the pending nodes before index i,
    ``arguments()`` gives the next node's inputs, ``step()`` runs it and returns its value."""

    def __init__(self, graph_module: fx.GraphModule, args: tuple, kwargs: dict):
        self.nodes = list(graph_module.graph.nodes)
        self.position = 0
        self._interpreter = fx.Interpreter(graph_module, garbage_collect_values=True)
        self._inputs = dict(inspect.signature(graph_module.forward).bind(*args, **kwargs).arguments)

    def run_to(self, stop: int) -> None:
        """Execute the nodes from the current position up to (not including) index ``stop``."""
        while self.position < stop:
            self.step()

    def step(self):
        """Execute the node at the current position and return its value."""
        node = self.nodes[self.position]
        with torch.no_grad():
            value = self._run(node)
        env = self._interpreter.env
        env[node] = value
        for done in self._interpreter.user_to_last_uses.get(node, ()):
            del env[done]
        if not node.users:
            del env[node]
        self.position += 1
        return value

    def fork(self) -> "GraphCursor":
        """A second run paused at the same node, on copies of the values held (so in-place ops in one
        run cannot change the other)."""
        twin = object.__new__(GraphCursor)
        twin.nodes, twin.position, twin._inputs = self.nodes, self.position, dict(self._inputs)
        twin._interpreter = copy.copy(self._interpreter)  # shares the module look-ups and last-use table, read only
        clone = lambda value: value.clone() if isinstance(value, torch.Tensor) else value
        twin._interpreter.env = {node: tree_map(clone, value) for node, value in self._interpreter.env.items()}
        return twin

    def finish(self):
        """Run every remaining node; returns what the graph returns."""
        self.run_to(len(self.nodes) - 1)
        return self.step()

    def arguments(self) -> tuple:
        """The positional arguments the node at the current position will be called with."""
        args, _ = self._interpreter.fetch_args_kwargs_from_env(self.nodes[self.position])
        return args

    def held_tensors(self) -> list[torch.Tensor]:
        """The tensors this paused run holds for the nodes after it."""
        held = [*self._inputs.values(), *self._interpreter.env.values()]
        return [t for value in held for t in tree_leaves(value) if isinstance(t, torch.Tensor)]

    def value(self, node: fx.Node):
        """The value of an already-run ``node`` that later nodes still read."""
        return self._interpreter.env[node]

    def _run(self, node: fx.Node):
        if node.op == "placeholder":
            if node.target in self._inputs:
                return self._inputs.pop(node.target)  # held by the environment from here on, while read
            return node.args[0] if node.args else None
        return self._interpreter.run_node(node)
