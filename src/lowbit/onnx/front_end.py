"""The ONNX front end's steps (``lowbit.frontend.FrontEnd``): models are ONNX files or ``ModelProto`` s;
the graph is the file's, no example input needed."""

from __future__ import annotations

from lowbit.errors import SpecError
from lowbit.frontend import FrontEnd
from lowbit.onnx.adaround import adaround, sequential_mse
from lowbit.onnx.batchnorm_fold import fold_batchnorm
from lowbit.onnx.bias_correction import correct_bias
from lowbit.onnx.equalize import equalize
from lowbit.onnx.load import load_model
from lowbit.onnx.quantsim import OnnxQuantSim


def _fold_batchnorm(model, example_input) -> tuple:
    folded, pairs = fold_batchnorm(model)
    return folded, f"fold batchnorm: {len(pairs)} layers"


def _correct_bias(sim, data=None, mode: str = "empirical", **options):
    if mode != "empirical":
        raise SpecError(f"bias correction mode {mode!r} is not available for ONNX models yet; use 'empirical'")
    return correct_bias(sim, data, **options)


ONNX_FRONT_END = FrontEnd(
    name="onnx", needs_example=False, sim_type=OnnxQuantSim,
    prepare=lambda model, example_input: load_model(model),  # a checked copy: the file given never changes
    fold_batchnorm=_fold_batchnorm,
    equalize=lambda model, example_input=None, absorb_high_bias=True: equalize(model, absorb_high_bias),
    sim=lambda model, example_input, **options: OnnxQuantSim(model, **options),
    sequential_mse=sequential_mse, adaround=adaround, correct_bias=_correct_bias, onnx_graph=True)
