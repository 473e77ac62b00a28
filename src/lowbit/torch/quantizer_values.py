"""What a QuantSim's quantizers read (with every quantizer off) and write (as the sim runs), for one call."""

from __future__ import annotations

import torch

from lowbit.data import move_call


def quantizer_values(sim, args, kwargs, keys) -> tuple[dict, dict]:
    """For each quantizer key: its input in the float model (every quantizer off) and its output in the sim."""
    args, kwargs = move_call(args, kwargs, sim._device())
    quantizers = sim.quantizers()
    return (_capture(sim, quantizers, keys, args, kwargs, quantized=False),
            _capture(sim, quantizers, keys, args, kwargs, quantized=True))


def _capture(sim, quantizers, keys, args, kwargs, quantized: bool) -> dict[str, torch.Tensor]:
    """Float inputs (``quantized=False``: every quantizer off) or quantized outputs of the named quantizers."""
    captured, hooks = {}, []
    saved = {key: quantizer.mode for key, quantizer in quantizers.items()}
    for key in keys:
        def hook(module, inputs, output, key=key):
            captured[key] = (output if quantized else inputs[0]).detach().float().cpu().flatten()
        hooks.append(quantizers[key].register_forward_hook(hook))
    try:
        if not quantized:
            for quantizer in quantizers.values():
                quantizer.mode = "off"
        with torch.no_grad():
            sim.model(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
        for key, quantizer in quantizers.items():
            quantizer.mode = saved[key]
    return captured
