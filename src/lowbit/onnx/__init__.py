"""The ONNX front end: quantize an ``.onnx`` model without its framework's code."""

from lowbit.onnx.batchnorm_fold import fold_batchnorm
from lowbit.onnx.load import MIN_OPSET, load_model
from lowbit.onnx.quantsim import OnnxQuantSim

__all__ = ["MIN_OPSET", "OnnxQuantSim", "fold_batchnorm", "load_model"]
