"""The PyTorch front end's steps (``lowbit.frontend.FrontEnd``): models are ``nn.Module`` s
(TorchScript included), traced with an example input."""

from __future__ import annotations

import copy

from lowbit.errors import GraphCaptureError, SpecError
from lowbit.frontend import FrontEnd
from lowbit.torch.adaround import adaround
from lowbit.torch.batchnorm_fold import fold_batchnorm
from lowbit.torch.bias_correction import correct_bias
from lowbit.torch.capture import with_layer_modules, with_scripts_as_graphs
from lowbit.torch.equalize import equalize
from lowbit.torch.lora import working_copy
from lowbit.torch.quantsim import QuantSim
from lowbit.torch.sequential_mse import sequential_mse


def _prepare(model, example_input):
    """An eval-mode copy, scripts converted, peft LoRA layers made adapted layers and functional layers modules."""
    return with_layer_modules(with_scripts_as_graphs(working_copy(model).eval(), example_input), example_input)


def _fold_batchnorm(model, example_input) -> tuple:
    """``model`` with BatchNorm folded in place, and the step's line (skipped where fx cannot trace)."""
    try:
        return model, f"fold batchnorm: {len(fold_batchnorm(model, example_input))} layers"
    except GraphCaptureError:
        return model, "fold batchnorm: skipped (torch.fx cannot trace the model)"


def _equalize(model, example_input, absorb_high_bias: bool = True) -> tuple:
    """An equalized copy of ``model`` (BatchNorm folded first), and the groups; ``model`` is untouched."""
    if example_input is None:
        raise SpecError("equalize needs example_input for a PyTorch model (to trace its graph)")
    equalized = copy.deepcopy(model)
    return equalized, equalize(equalized, example_input, absorb_high_bias=absorb_high_bias)


TORCH_FRONT_END = FrontEnd(
    name="torch", needs_example=True, sim_type=QuantSim, prepare=_prepare, fold_batchnorm=_fold_batchnorm,
    equalize=_equalize, sim=lambda model, example_input, **options: QuantSim(model, example_input, **options),
    sequential_mse=sequential_mse, adaround=adaround, correct_bias=correct_bias)
