"""The ONNX front end: quantize an ``.onnx`` model without its framework's code."""

from lowbit.onnx.load import MIN_OPSET, load_model

__all__ = ["MIN_OPSET", "load_model"]
