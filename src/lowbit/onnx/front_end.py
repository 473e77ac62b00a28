"""The ONNX front end as ``lowbit.frontend`` sees it: the steps of ``quantize`` on an ONNX model."""

from __future__ import annotations

from lowbit.errors import SpecError
from lowbit.onnx.adaround import adaround, sequential_mse
from lowbit.onnx.batchnorm_fold import fold_batchnorm
from lowbit.onnx.bias_correction import correct_bias
from lowbit.onnx.equalize import equalize
from lowbit.onnx.load import load_model
from lowbit.onnx.quantsim import OnnxQuantSim


class OnnxFrontEnd:
    """Models are ONNX files or ``ModelProto`` s; the graph is the file's, no example input needed."""

    name = "onnx"
    needs_example = False
    sim_type = OnnxQuantSim
    adaround = staticmethod(adaround)
    sequential_mse = staticmethod(sequential_mse)

    @staticmethod
    def prepare(model, example_input):
        """The model loaded and checked (a copy: the file or proto given is never changed)."""
        return load_model(model)

    @staticmethod
    def fold_batchnorm(model, example_input) -> tuple:
        folded, pairs = fold_batchnorm(model)
        return folded, f"fold batchnorm: {len(pairs)} layers"

    @staticmethod
    def equalize(model, example_input=None, absorb_high_bias: bool = True) -> tuple:
        """An equalized copy (BatchNorm folded first), and the groups."""
        return equalize(model, absorb_high_bias=absorb_high_bias)

    @staticmethod
    def sim(model, example_input, **options) -> OnnxQuantSim:
        return OnnxQuantSim(model, **options)

    @staticmethod
    def correct_bias(sim, data=None, mode: str = "empirical", **options):
        if mode != "empirical":
            raise SpecError(f"bias correction mode {mode!r} is not available for ONNX models yet; use 'empirical'")
        return correct_bias(sim, data, **options)
