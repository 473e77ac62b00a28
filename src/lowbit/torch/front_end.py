"""The PyTorch front end as ``lowbit.frontend`` sees it: the steps of ``quantize`` on an ``nn.Module``."""

from __future__ import annotations

import copy

from lowbit.errors import GraphCaptureError, SpecError
from lowbit.torch.adaround import adaround
from lowbit.torch.batchnorm_fold import fold_batchnorm
from lowbit.torch.bias_correction import correct_bias
from lowbit.torch.capture import with_layer_modules, with_scripts_as_graphs
from lowbit.torch.equalize import equalize
from lowbit.torch.quantsim import QuantSim
from lowbit.torch.sequential_mse import sequential_mse


class TorchFrontEnd:
    """Models are ``nn.Module`` s (TorchScript included), traced with an example input."""

    name = "torch"
    needs_example = True
    sim_type = QuantSim
    adaround = staticmethod(adaround)
    sequential_mse = staticmethod(sequential_mse)
    correct_bias = staticmethod(correct_bias)

    @staticmethod
    def prepare(model, example_input):
        """An eval-mode copy, scripts converted and functional layers made modules."""
        copied = with_scripts_as_graphs(copy.deepcopy(model).eval(), example_input)
        return with_layer_modules(copied, example_input)

    @staticmethod
    def fold_batchnorm(model, example_input) -> tuple:
        """``model`` with BatchNorm folded in place, and the step's line (skipped where fx cannot trace)."""
        try:
            return model, f"fold batchnorm: {len(fold_batchnorm(model, example_input))} layers"
        except GraphCaptureError:
            return model, "fold batchnorm: skipped (torch.fx cannot trace the model)"

    @staticmethod
    def equalize(model, example_input, absorb_high_bias: bool = True) -> tuple:
        """``model`` equalized in place (BatchNorm folded first), and the groups."""
        if example_input is None:
            raise SpecError("equalize needs example_input for a PyTorch model (to trace its graph)")
        return model, equalize(model, example_input, absorb_high_bias=absorb_high_bias)

    @staticmethod
    def sim(model, example_input, **options) -> QuantSim:
        return QuantSim(model, example_input, **options)
