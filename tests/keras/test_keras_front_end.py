"""Keras models through the ONNX route: a small CNN trained here on scikit-learn's digits, as an object, a `.keras`
file, a SavedModel folder and on the command line; the zoo's Keras MobileNetV2 against the PyTorch one."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import lowbit
from lowbit.cli import cli
from lowbit.errors import ModelLoadError
from lowbit.runtime import session

keras = pytest.importorskip("keras", reason="the Keras front end needs the keras extra: pip install 'lowbit[keras]'")
pytestmark = pytest.mark.slow  # TensorFlow's import and conversions take seconds


@pytest.fixture(scope="module")
def digits():
    """(train images, train labels, test images, test labels): scikit-learn's 8x8 digits as NHWC floats in [0, 1]."""
    from sklearn.datasets import load_digits
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[..., None]
    return images[:1400], data.target[:1400], images[1400:], data.target[1400:]


@pytest.fixture(scope="module")
def digits_model(digits):
    """A small CNN as Keras users write one (BatchNorm after a depthwise convolution included), trained briefly."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((8, 8, 1)), layers.Conv2D(16, 3, padding="same"), layers.BatchNormalization(), layers.ReLU(),
        layers.DepthwiseConv2D(3, padding="same"), layers.BatchNormalization(), layers.ReLU(6.0),
        layers.Conv2D(32, 1, strides=2), layers.ReLU(), layers.Flatten(), layers.Dense(10)],
        name="digits_cnn")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits[0], digits[1], epochs=8, batch_size=32, verbose=0)
    return model


def batches(images: np.ndarray, size: int = 64) -> list[np.ndarray]:
    return [images[i:i + size] for i in range(0, len(images), size)]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def test_a_keras_model_quantizes_and_its_float_graph_computes_what_keras_computes(digits_model, digits, tmp_path):
    _, _, test_images, test_labels = digits
    calibration = batches(digits[0][:256])
    sim = lowbit.quantize(digits_model, calibration)
    assert isinstance(sim, lowbit.onnx.OnnxQuantSim)
    paths = sim.export(tmp_path, "digits", verify=batches(test_images))
    float_graph = session(str(paths.onnx))
    converted = float_graph.run(None, {float_graph.get_inputs()[0].name: test_images})[0]
    np.testing.assert_allclose(converted, digits_model.predict(test_images, verbose=0), rtol=1e-4, atol=1e-4)
    # both BatchNorms folded: tf2onnx folds the one after Conv2D, lowbit the Mul and Add it leaves after the depthwise
    assert not {"Mul", "BatchNormalization"} & {n.op_type for n in onnx.load(str(paths.qdq_onnx)).graph.node}
    float_accuracy = accuracy(converted, test_labels)
    quantized = np.concatenate([sim(b)[0] for b in batches(test_images)])
    assert float_accuracy > 0.8 and accuracy(quantized, test_labels) >= float_accuracy - 0.02
    assert paths.fidelity.top1_agreement == 1.0


def test_a_keras_file_and_a_saved_model_folder_quantize_alike(digits_model, digits, tmp_path):
    digits_model.save(tmp_path / "digits.keras")
    digits_model.export(str(tmp_path / "saved"), verbose=False)
    calibration, test_images = batches(digits[0][:256]), digits[2]
    reference = digits_model.predict(test_images, verbose=0).argmax(1)
    for model in (tmp_path / "digits.keras", str(tmp_path / "saved")):
        sim = lowbit.quantize(model, calibration)
        predicted = np.concatenate([sim(b)[0] for b in batches(test_images)]).argmax(1)
        assert (predicted == reference).mean() >= 0.97, model


def test_the_command_line_quantizes_a_keras_file_for_litert(digits_model, digits, tmp_path):
    digits_model.save(tmp_path / "digits.keras")
    np.save(tmp_path / "data.npy", digits[0][:128])
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["quantize", str(tmp_path / "digits.keras"), "--data", str(tmp_path / "data.npy"),
                                      "--out", str(out), "--name", "digits", "--tflite"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"digits.onnx", "digits.encodings", "digits.qdq.onnx", "digits.tflite"}
    assert "top-1 agreement 100.00%" in result.output
    assert "sim vs LiteRT: top-1 agreement 100.00%" in result.output


def test_a_layer_onnx_cannot_express_is_named():
    import tensorflow as tf
    inputs = keras.Input((4, 4))
    values = keras.layers.Lambda(lambda t: tf.linalg.svd(t, compute_uv=False), name="singular_values")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(values), name="svd_net")
    with pytest.raises(ModelLoadError, match="Keras model 'svd_net': layer 'singular_values' uses TensorFlow op Svd"):
        lowbit.quantize(model, [np.ones((2, 4, 4), np.float32)])


def test_a_missing_keras_file_is_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match=r"Keras model '.*absent.keras' not found"):
        lowbit.quantize(tmp_path / "absent.keras", [np.ones((2, 8, 8, 1), np.float32)])


def test_without_tensorflow_the_error_names_the_extra(monkeypatch):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    monkeypatch.setitem(sys.modules, "keras", None)  # what `import keras` meets where the extra is not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'lowbit\[keras\]'"):
        lowbit.quantize(model, [np.ones((2, 8, 8, 1), np.float32)])


def test_the_zoo_keras_mobilenet_v2_computes_the_pytorch_model(eval_batches):
    from lowbit.zoo import pretrained_mobilenet_v2
    from lowbit.zoo.keras_mobilenet_v2 import keras_mobilenet_v2
    images = eval_batches[0][:8]
    with torch.no_grad():
        expected = pretrained_mobilenet_v2().eval()(images).numpy()
    got = keras_mobilenet_v2().predict(images.permute(0, 2, 3, 1).numpy(), verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_analysis_takes_a_keras_model(digits_model, digits, tmp_path):
    result = lowbit.analyze(digits_model, batches(digits[0][:128]), out_dir=tmp_path)
    assert result.report_path.is_file() and len(result.layers) >= 4
    assert all(np.isfinite(layer.only) for layer in result.layers)


def test_a_model_of_free_image_size_needs_an_input_shape_for_litert(tmp_path):
    from lowbit.errors import ExportError
    layers = keras.layers
    model = keras.Sequential([keras.Input((None, None, 3)), layers.Conv2D(4, 3), layers.GlobalAveragePooling2D()])
    data = [np.random.default_rng(0).random((4, 16, 16, 3), np.float32)]
    sim = lowbit.quantize(model, data, target="litert-int8")
    with pytest.raises(ExportError, match="dynamic sizes .* pass input_shape"):
        sim.export_tflite(tmp_path / "free.tflite")
    assert not (tmp_path / "free.tflite").exists()
    written = sim.export_tflite(tmp_path / "fixed.tflite", input_shape=(1, 16, 16, 3), verify=data)
    assert written.fidelity.max_error_lsb <= 1.0


def test_a_trained_keras_model_runs_in_litert_as_simulated(digits_model, digits, tmp_path):
    train_images, _, test_images, test_labels = digits
    sim = lowbit.quantize(digits_model, batches(train_images[:256]), target="litert-int8")
    written = sim.export_tflite(tmp_path / "digits.tflite", verify=batches(test_images))
    assert written.fidelity.top1_agreement >= 0.995 and written.fidelity.max_error_lsb <= 1.0
    from lowbit.litert import LiteRtModel
    litert = np.concatenate([LiteRtModel(written.path)(b)[0] for b in batches(test_images)])
    float_accuracy = accuracy(digits_model.predict(test_images, verbose=0), test_labels)
    assert accuracy(litert, test_labels) >= float_accuracy - 0.02


def test_autoquant_takes_a_keras_model(digits_model, digits, tmp_path):
    result = lowbit.autoquant(digits_model, batches(digits[0][:128]), allowed_drop=0.05, out_dir=tmp_path)
    assert result.stages[0].name == "minmax" and result.met
    assert result.export_paths.qdq_onnx.is_file() and result.report_path.is_file()


def test_captured_normalization_constants_become_initializers_with_the_model_s_values():
    """tf2onnx makes the mean and variance a Normalization layer captures into graph inputs (keras.applications'
    EfficientNets have one); they become initializers with the model's values, so the float graph computes what
    Keras computes."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.Normalization(mean=[120.0, 115.0, 100.0], variance=[3600.0, 3500.0, 3700.0])(inputs)
    small = keras.Model(inputs, layers.Dense(4)(layers.GlobalAveragePooling2D()(layers.Conv2D(8, 3)(x))))
    efficientnet = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classes=10)
    generator = np.random.default_rng(0)
    for model, size in ((small, 16), (efficientnet, 64)):
        images = generator.random((8, size, size, 3), dtype=np.float32) * 255
        sim = lowbit.quantize(model, [images[:4], images[4:]], techniques=())
        assert len(sim.model.graph.input) == 1
        float_graph = session(sim.model.SerializeToString())
        computed = float_graph.run(None, {float_graph.get_inputs()[0].name: images})[0]
        expected = keras.ops.convert_to_numpy(model(images))
        np.testing.assert_allclose(computed, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_a_keras_classifier_ending_in_softmax_runs_in_litert_as_simulated(tmp_path):
    """Dense layers without bias (tf2onnx writes a bare MatMul) and a softmax output, the way keras.applications
    classifiers end."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((16, 16, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(16, 3, activation="relu")(inputs))
    model = keras.Model(inputs, layers.Dense(10, activation="softmax")(layers.Dense(10, use_bias=False)(x)))
    data = [np.random.default_rng(seed).normal(size=(32, 16, 16, 3)).astype(np.float32) * 3 for seed in range(4)]
    sim = lowbit.quantize(model, data[:2], target="litert-int8")
    written = sim.export_tflite(tmp_path / "classifier.tflite", verify=data[2:])
    assert written.fidelity.top1_agreement == 1.0 and written.fidelity.max_error_lsb <= 1.0
