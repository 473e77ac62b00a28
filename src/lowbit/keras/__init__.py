"""Keras 3 models and TensorFlow SavedModels: converted to ONNX, then quantized by the ONNX front end."""

from lowbit.keras.convert import is_keras_model, keras_to_onnx

__all__ = ["is_keras_model", "keras_to_onnx"]
