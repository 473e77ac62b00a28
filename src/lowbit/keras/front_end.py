"""The Keras front end's steps (``lowbit.frontend.FrontEnd``): the ONNX front end's, on the ONNX graph Keras exports
(built with an example input when the model was never called). The sim is an ``OnnxQuantSim``."""

from __future__ import annotations

from dataclasses import replace

from lowbit.keras.convert import keras_to_onnx
from lowbit.onnx.front_end import ONNX_FRONT_END
from lowbit.onnx.load import load_model

KERAS_FRONT_END = replace(ONNX_FRONT_END, name="keras", needs_example=True,
                          prepare=lambda model, example_input: load_model(keras_to_onnx(model, example_input)))
