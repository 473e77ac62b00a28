"""Per-layer data for layer-wise optimisations: run the sim and a float copy of it on the same
batches, stop at one layer, and keep sampled rows of the layer's quantized input and float output."""

from __future__ import annotations

import math

import torch
from torch import fx, nn

from lowbit.data import channels_last_call, checked_calls, move_call
from lowbit.errors import DataError, NotCalibratedError
from lowbit.progress import progress
from lowbit.quant.quantizer import Quantizer
from lowbit.graph.blocks import Block
from lowbit.torch.graph_blocks import block_nodes, fx_blocks
from lowbit.torch.float_parameters import float_copy
from lowbit.torch.graph_cursor import GraphCursor
from lowbit.algorithms.layer_rows import rows_unsupported, sample_rows
from lowbit.algorithms.row_cache import RowCache
from lowbit.torch.weight_quantized import WeightQuantized


class _Reached(Exception):
    """Raised by a hook to stop a forward pass once the layer of interest has been seen."""


def layer_inputs_for(sim, data, transform, num_batches: int | None, technique: str) -> "LayerInputs":
    """The checked start of a layer-wise technique: the sim must be calibrated and ``data`` must hold
    at least ``num_batches`` batches."""
    if not sim.is_calibrated:
        raise NotCalibratedError(f"{technique} needs a calibrated sim: call sim.calibrate(data) first")
    calls = list(checked_calls(data, transform, num_batches))
    if num_batches is not None and len(calls) < num_batches:
        raise DataError(f"{technique} asked for {num_batches} batches but the data has only {len(calls)}")
    return LayerInputs(sim, calls)


def weight_skip_reason(wrapper: WeightQuantized) -> str | None:
    """Why a layer-wise weight technique cannot optimise this layer, or None."""
    quantizer = wrapper.weight_quantizer
    if not isinstance(quantizer, Quantizer) or quantizer.mode != "quantize":
        return "weight quantizer disabled"
    if quantizer.spec.block_size is not None:
        return "per-block weight encodings"
    return rows_unsupported(wrapper.layer)


class LayerInputs:
    """The sim and its float model (:func:`float_copy`) run on the same ``calls``; on an fx graph both
    pause at each layer and resume there (:class:`GraphCursor`), so layers must be collected in call order."""

    def __init__(self, sim, calls: list[tuple[tuple, dict]]):
        self.sim = sim
        self.calls = calls
        self.device = sim._device()
        self.reference = float_copy(sim.model)
        self._node_index = _single_call_layers(sim.model)
        self._cursors: list[tuple[GraphCursor, GraphCursor]] = []

    def layer_order(self) -> list[str]:
        """Names of the weight-quantized layers in the order the first batch calls them."""
        if self._node_index is not None:
            return sorted(self._node_index, key=self._node_index.get)
        order: list[str] = []
        hooks = [module.register_forward_pre_hook(lambda m, a, name=name: order.append(name))
                 for name, module in self.sim.model.named_modules() if isinstance(module, WeightQuantized)]
        try:
            self._run(self.sim.model, self.calls[0])
        finally:
            for hook in hooks:
                hook.remove()
        return list(dict.fromkeys(order))

    def collect(self, name: str, max_rows: int, memory_limit: int, generator: torch.Generator,
                description: str) -> RowCache:
        """Rows (input patch of the sim's layer, float output of the reference's) sampled evenly over
        the batches, at most ``max_rows`` in all."""
        layer = self.sim.model.get_submodule(name).layer
        cache = None
        for batch, args_kwargs in enumerate(progress(self.calls, f"{description} {name}", len(self.calls))):
            if self._node_index is not None:
                quantized_input, float_output = self._resume(name, batch)
            else:
                quantized_input = self._capture(self.sim.model, name, args_kwargs, "input")
                float_output = self._capture(self.reference, name, args_kwargs, "output")
            if quantized_input is None or float_output is None:
                continue
            if cache is None:
                positions = float_output.numel() // float_output.shape[-1 if isinstance(layer, nn.Linear) else 1]
                per_batch = min(positions, math.ceil(max_rows / len(self.calls)))
                probe_inputs, _ = sample_rows(layer, quantized_input[:1], float_output[:1], 1, generator)
                cache = RowCache(per_batch * len(self.calls), tuple(probe_inputs.shape[1:]),
                                 (layer.weight.shape[0],), memory_limit)
            inputs, outputs = sample_rows(layer, quantized_input, float_output, per_batch, generator)
            cache.append(inputs, outputs)
        return cache

    def collect_block(self, block: Block, memory_limit: int, description: str) -> RowCache:
        """Every sample's quantized input of ``block`` (the sim paused at its start) and float output
        (the reference run past it); needs a torch.fx graph (see :meth:`blocks`)."""
        cache = None
        input_node, start, output_index = block_nodes(self.sim.model, block)
        for batch in progress(range(len(self.calls)), f"{description} {block.layers[0]}…", len(self.calls)):
            quantized, reference = self._cursor_pair(batch, start)
            quantized.run_to(start)
            reference.run_to(output_index)
            quantized_input, float_output = quantized.value(input_node).detach(), reference.step().detach()
            if cache is None:
                samples = quantized_input.shape[0] * len(self.calls)
                cache = RowCache(samples, tuple(quantized_input.shape[1:]), tuple(float_output.shape[1:]),
                                 memory_limit)
            cache.append(quantized_input, float_output)
        return cache

    def blocks(self, max_layers: int) -> list[Block] | None:
        """The sim's graph blocks of at most ``max_layers`` weight layers, or None when the sim has no torch.fx
        graph calling each layer once."""
        if self._node_index is None:
            return None
        return fx_blocks(self.sim.model, set(self._node_index), max_layers)

    def _resume(self, name: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``batch``'s quantized input and float output of layer ``name``, from the paused runs."""
        index = self._node_index[name]
        quantized, reference = self._cursor_pair(batch, index)
        quantized.run_to(index)
        reference.run_to(index)
        return quantized.arguments()[0].detach(), reference.step().detach()

    def _cursor_pair(self, batch: int, index: int) -> tuple[GraphCursor, GraphCursor]:
        """Batch ``batch``'s paused (sim, reference) runs, restarted from the input for the first batch
        when the sim's run is already past node ``index``."""
        if batch == 0 and (not self._cursors or self._cursors[0][0].position > index):
            self._cursors = []
            for args_kwargs in self.calls:
                args, kwargs = channels_last_call(*move_call(*args_kwargs, self.device))
                self._cursors.append((GraphCursor(self.sim.model, args, kwargs),
                                      GraphCursor(self.reference, args, kwargs)))
        return self._cursors[batch]

    def _capture(self, model: nn.Module, name: str, args_kwargs, what: str) -> torch.Tensor | None:
        """The input (or output) of ``model``'s module ``name`` at its first call for this batch, None
        when this batch does not reach it."""
        seen = []

        def keep(module, args, *output):  # a forward pre-hook gets no output
            seen.append(output[0] if output else args[0])
            raise _Reached

        module = model.get_submodule(name)
        hook = module.register_forward_pre_hook(keep) if what == "input" else module.register_forward_hook(keep)
        try:
            self._run(model, args_kwargs)
        except _Reached:
            pass
        finally:
            hook.remove()
        return seen[0].detach() if seen else None

    def _run(self, model: nn.Module, args_kwargs) -> None:
        args, kwargs = channels_last_call(*move_call(*args_kwargs, self.device))
        with torch.no_grad():
            model(*args, **kwargs)


def _single_call_layers(model: nn.Module) -> dict[str, int] | None:
    """Graph position of each weight-quantized layer's call node, when ``model`` is a torch.fx
    GraphModule that calls every such layer exactly once; None otherwise."""
    if not isinstance(model, fx.GraphModule):
        return None
    wrappers = {name for name, module in model.named_modules() if isinstance(module, WeightQuantized)}
    positions: dict[str, int] = {}
    for index, node in enumerate(model.graph.nodes):
        if node.op == "call_module" and node.target in wrappers:
            if node.target in positions:
                return None
            positions[node.target] = index
    return positions if set(positions) == wrappers else None
