"""Per-layer QuantSim configurations scored without re-running the model's start: each continues from a copy
of a float or quantized run paused at the layer's first node, so that prefix runs once per batch."""

from __future__ import annotations

import torch
from torch import fx

from lowbit.data import first_tensor, move_call
from lowbit.progress import progress
from lowbit.torch.graph_cursor import GraphCursor
from lowbit.torch.integer_add import IntegerAdd
from lowbit.torch.weight_quantized import WeightQuantized


def forked_outputs(sim, calls, groups, plans, enabled_only) -> dict[tuple[str, str], list[torch.Tensor]] | None:
    """First float output per (layer, configuration) and batch; ``plans[group.name]`` lists (configuration,
    enabled quantizers, "float"/"quantized"). None when the sim is no fx graph or a quantizer has no node of its own."""
    graph_module = sim.model
    if not isinstance(graph_module, fx.GraphModule):
        return None
    starts = _first_nodes(graph_module, sim, groups)
    if starts is None:
        return None
    every = set(sim.quantizers())
    order = sorted(groups, key=lambda group: starts[group.name])
    outputs: dict[tuple[str, str], list[torch.Tensor]] = {}
    device = sim._device()
    for args, kwargs in progress(calls, "analyze", len(calls)):
        args, kwargs = move_call(args, kwargs, device)
        runs = {"float": (GraphCursor(graph_module, args, kwargs), set()),
                "quantized": (GraphCursor(graph_module, args, kwargs), every)}
        for group in order:
            for cursor, enabled in runs.values():
                with enabled_only(sim, enabled):
                    cursor.run_to(starts[group.name])
            for configuration, keys, shared in plans[group.name]:
                branch = runs[shared][0].fork()
                with enabled_only(sim, every - keys if configuration == "all_but" else keys):
                    value = branch.finish()
                outputs.setdefault((group.name, configuration), []).append(first_tensor(value).detach().float().cpu())
    return outputs


def _first_nodes(graph_module: fx.GraphModule, sim, groups) -> dict[str, int] | None:
    """Index of the first graph node that calls or reads one of each group's quantizers (weights: their
    layer; a layer or IntegerAdd also reads the quantizers of its input and output)."""
    keys = {id(quantizer): key for key, quantizer in sim.quantizers().items()}
    first: dict[str, int] = {}
    for index, node in enumerate(graph_module.graph.nodes):
        if node.op != "call_module":
            continue
        module = graph_module.get_submodule(node.target)
        if isinstance(module, WeightQuantized):
            called = [module.weight_quantizer, module.input_quantizer, module.output_quantizer]
        else:
            called = list(module.quantizers) if isinstance(module, IntegerAdd) else [module]
        for quantizer in called:
            if id(quantizer) in keys:
                first.setdefault(keys[id(quantizer)], index)
    if any(key not in first for group in groups for key in group.keys):
        return None
    return {group.name: min(first[key] for key in group.keys) for group in groups}
