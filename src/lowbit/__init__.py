"""lowbit: quantization simulation, calibration and int8 export for PyTorch models."""

from lowbit.api import load_encodings, quantize
from lowbit.errors import LowbitError
from lowbit.target import load_target, preset_names
from lowbit.torch.batchnorm_fold import fold_batchnorm
from lowbit.torch.bias_correction import correct_bias
from lowbit.torch.equalize import equalize
from lowbit.torch.quantsim import QuantSim

__all__ = ["QuantSim", "quantize", "load_encodings", "fold_batchnorm", "equalize", "correct_bias",
           "load_target", "preset_names", "LowbitError"]
__version__ = "0.1.0"
