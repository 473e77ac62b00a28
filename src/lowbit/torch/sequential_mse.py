"""Sequential MSE on a QuantSim: per layer in call order, the sim's quantized inputs and the float outputs
choose weight encodings (``lowbit.algorithms.sequential_mse``) that are frozen into the sim's weight quantizers."""

from __future__ import annotations

import time

import torch

from lowbit.algorithms.layer_rows import layer_groups, rows_forward
from lowbit.algorithms.sequential_mse import (SequentialMSEResult, check_options, output_error,
                                              search_weight_encoding)
from lowbit.quant.fake_quant import fake_quantize
from lowbit.torch.layer_inputs import layer_inputs_for, weight_skip_reason
from lowbit.torch.weight_quantized import WeightQuantized

def sequential_mse(sim, data, num_candidates: int = 20, loss: str = "mse", num_batches: int | None = None,
                   transform=None, max_rows: int = 4096, memory_limit: int = 1 << 30) -> SequentialMSEResult:
    """Sequential MSE (AIMET's recipe), in place on ``sim``'s weight encodings: layer by layer in call order, each
    channel's best of ``num_candidates`` ranges [c · min, c · max] by ``loss`` on up to ``max_rows`` rows is frozen.
    Conv1d/Conv2d/Linear only, others skipped and named in the result; activation encodings stay as calibrated
    (rerun ``sim.calibrate(data)``). Rows beyond ``memory_limit`` bytes are kept on disk."""
    check_options(loss, num_candidates, max_rows)
    start = time.perf_counter()
    layer_inputs = layer_inputs_for(sim, data, transform, num_batches, "sequential MSE")
    order = layer_inputs.layer_order()
    wrappers = {name: m for name, m in sim.model.named_modules() if isinstance(m, WeightQuantized)}
    reasons = {name: _skip_reason(wrapper, name in order) for name, wrapper in wrappers.items()}
    generator = torch.Generator().manual_seed(0)
    optimized, before, after = [], [], []
    for name in order:
        if reasons[name] is not None:
            continue
        wrapper = wrappers[name]
        layer, quantizer = wrapper.layer, wrapper.weight_quantizer
        weight = layer.weight.detach()
        bias = None if layer.bias is None else layer.bias.detach()
        layer_output = lambda inputs, quantized: rows_forward(inputs, quantized, bias, layer_groups(layer))
        with layer_inputs.collect(name, max_rows, memory_limit, generator, "sequential mse") as cache:
            rows = lambda: cache.chunks(layer_inputs.device)
            current = output_error(fake_quantize(weight, quantizer.encoding), rows, layer_output)
            search = search_weight_encoding(weight, quantizer.spec, rows, layer_output, num_candidates, loss)
        quantizer.freeze(search.encoding, by="sequential_mse")
        optimized.append(name)
        before.append(current.mse)
        after.append(search.error.mse)
    skipped = {name: reason for name, reason in reasons.items() if reason is not None}
    return SequentialMSEResult(tuple(optimized), tuple(before), tuple(after), skipped,
                               time.perf_counter() - start)


def _skip_reason(wrapper: WeightQuantized, reached: bool) -> str | None:
    """Why sequential MSE leaves this layer alone, or None."""
    if not reached:
        return "not reached by the first batch"
    reason = weight_skip_reason(wrapper)
    if reason is not None:
        return reason
    spec = wrapper.weight_quantizer.spec
    if spec.axis is not None and spec.axis % wrapper.layer.weight.dim() != 0:
        return f"per-channel weight encodings on axis {spec.axis}, not the output channels"
    return None
