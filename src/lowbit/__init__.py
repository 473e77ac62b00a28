"""lowbit: quantization simulation, calibration and int8 export (onnxruntime, LiteRT) for PyTorch, ONNX and Keras models."""

from lowbit.analysis import analyze, autoquant, mixed_precision
from lowbit.api import adaround, correct_bias, equalize, load_encodings, quantize, sequential_mse
from lowbit.compression import compress
from lowbit.errors import LowbitError
from lowbit.target import load_target, preset_names
from lowbit.torch.batchnorm_fold import fold_batchnorm
from lowbit.torch.quantsim import QuantSim
from lowbit.training.batchnorm import reestimate_batchnorm
from lowbit.training.qat import qat

__all__ = ["QuantSim", "quantize", "load_encodings", "fold_batchnorm", "equalize", "correct_bias",
           "adaround", "sequential_mse", "qat", "reestimate_batchnorm", "compress", "analyze", "mixed_precision", "autoquant",
           "load_target", "preset_names", "LowbitError"]
__version__ = "0.1.0"
