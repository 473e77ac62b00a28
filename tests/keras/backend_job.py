"""A Keras model as a user of any backend builds one (a padded strided convolution, BatchNorm with its own
statistics, a depthwise convolution, ReLU6, a residual add, a strided "same" convolution, whose padding the torch
backend computes from the input's shape, global pooling, a classifier), quantized for LiteRT;
prints one JSON line: the float graph's error against Keras, its op types, the sim's agreement with the float model
and sim↔LiteRT fidelity.

    KERAS_BACKEND=torch python backend_job.py OUT_DIR        (or jax)
"""

import json
import sys
from collections import Counter

import keras
import numpy as np

import lowbit
from lowbit.runtime import session

keras.utils.set_random_seed(0)
layers = keras.layers
inputs = keras.Input((32, 32, 3))
x = layers.ZeroPadding2D(((0, 1), (0, 1)))(inputs)
x = layers.Conv2D(16, 3, strides=2, use_bias=False)(x)
x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
y = layers.Conv2D(16, 1)(layers.ReLU(6.0)(layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same")(x))))
x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(layers.Add()([x, y]))  # padding from shapes
outputs = layers.Dense(10)(layers.GlobalAveragePooling2D()(layers.Conv2D(32, 1, activation="relu")(x)))
model = keras.Model(inputs, outputs)
generator = np.random.default_rng(0)
for layer in model.layers:
    if isinstance(layer, layers.BatchNormalization):
        gamma, beta, mean, variance = layer.get_weights()
        layer.set_weights([generator.uniform(-1.5, 1.5, gamma.shape), generator.normal(0, 0.3, beta.shape),
                           generator.normal(0, 0.5, mean.shape), generator.uniform(0.2, 2.0, variance.shape)])
images = generator.random((96, 32, 32, 3), dtype=np.float32)
data = [images[i:i + 16] for i in range(0, 64, 16)]
held_out = images[64:]
sim = lowbit.quantize(model, data, target="litert-int8")
float_graph = session(sim.model.SerializeToString())
float_outputs = float_graph.run(None, {float_graph.get_inputs()[0].name: held_out})[0]
keras_outputs = keras.ops.convert_to_numpy(model(held_out))
written = sim.export_tflite(f"{sys.argv[1]}/model.tflite", verify=[held_out])
quantized = sim(held_out)[0]
print(json.dumps({"float_error": float(np.abs(float_outputs - keras_outputs).max()),
                  "output_range": float(np.abs(keras_outputs).max()),
                  "op_types": Counter(n.op_type for n in sim.model.graph.node),
                  "agreement": float((quantized.argmax(1) == keras_outputs.argmax(1)).mean()),
                  "litert_agreement": written.fidelity.top1_agreement,
                  "litert_lsb": written.fidelity.max_error_lsb}))
