"""What a QuantSim's quantizers read in the float model and write as the sim runs, for one call."""

from __future__ import annotations

import torch

from lowbit.data import move_call
from lowbit.torch.float_parameters import float_copy


def quantizer_values(sim, args, kwargs, keys) -> tuple[dict, dict]:
    """For each quantizer key: its input in the float model (:func:`float_copy`) and its output in the sim."""
    args, kwargs = move_call(args, kwargs, sim._device())
    paths = {module: path for path, module in sim.model.named_modules()}
    quantizers = {key: paths[quantizer] for key, quantizer in sim.quantizers().items() if key in keys}
    reference = float_copy(sim.model)
    return (_capture(reference, quantizers, args, kwargs, quantized=False),
            _capture(sim.model, quantizers, args, kwargs, quantized=True))


def _capture(model, quantizers: dict[str, str], args, kwargs, quantized: bool) -> dict[str, torch.Tensor]:
    """The inputs (``quantized=False``) or outputs of ``model``'s quantizers at the given module paths, by key."""
    captured, hooks = {}, []
    for key, path in quantizers.items():
        def hook(module, inputs, output, key=key):
            captured[key] = (output if quantized else inputs[0]).detach().float().cpu().flatten()
        hooks.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return captured
