"""ONNX files as packages ship them: Silero VAD's six pretrained models (opsets 15-18, If subgraphs,
LSTM, a 0-d integer input, state batched on axis 1), RapidOCR's three PaddleOCR models (opsets 11-12,
dynamic spatial axes, -1 dimensions), old opsets, -1 dimensions, damaged bytes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import LowbitError
from lowbit.runtime import session

SILERO = Path(importlib.util.find_spec("silero_vad").submodule_search_locations[0]) / "data"
SILERO_FILES = sorted(p.name for p in SILERO.glob("*.onnx"))


def _silero_batches(path: Path, batch: int, count: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Batches of noisy audio chunks with zero state, shaped as each file's inputs say."""
    rng = np.random.default_rng(seed)
    inputs = {i.name: [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim]
              for i in onnx.load(str(path)).graph.input}
    batches = []
    for _ in range(count):
        samples = inputs["input"][1] or 512
        rows = inputs["input"][0] or batch
        feed = {"input": (rng.standard_normal((rows, samples)) * 0.1).astype(np.float32)}
        for name in ("state", "h", "c"):
            if name in inputs:
                shape = [d if d is not None else rows for d in inputs[name]]
                feed[name] = np.zeros(shape, np.float32)
        if "sr" in inputs:
            feed["sr"] = np.array(16000, np.int64)
        batches.append(feed)
    return batches


def test_silero_ships_six_onnx_files():
    assert len(SILERO_FILES) == 6, SILERO_FILES


@pytest.mark.slow
@pytest.mark.parametrize("name", SILERO_FILES)
def test_silero_quantizes_and_the_sim_is_its_qdq_file(name, tmp_path):
    """Each file quantizes and exports; onnxruntime running the written QDQ file gives what the sim
    gave on every output, and the float export computes what the shipped file computes."""
    path = SILERO / name
    batches = _silero_batches(path, batch=4)
    sim = lowbit.quantize(path, batches)
    paths = sim.export(tmp_path, name="vad")
    quantized, shipped, exported = session(paths.qdq_onnx), session(path), session(paths.onnx)
    for batch in batches:
        simulated = sim(batch)
        executed = quantized.run(None, batch)
        assert len(simulated) == len(executed) == len(shipped.get_outputs())
        for ours, theirs in zip(simulated, executed):
            np.testing.assert_array_equal(ours, theirs)
        for ours, theirs in zip(exported.run(None, batch), shipped.run(None, batch)):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["silero_vad_16k_op15.onnx", "silero_vad_half.onnx"])
def test_silero_export_keeps_the_batch_axis_dynamic(name, tmp_path):
    path = SILERO / name
    sim = lowbit.quantize(path, _silero_batches(path, batch=4))
    paths = sim.export(tmp_path, name="vad")
    other = _silero_batches(path, batch=3, count=1, seed=5)[0]
    assert session(paths.qdq_onnx).run(None, other)[0].shape[0] == 3


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        return self.features(x)


def _export(tmp_path, opset: int) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"convnet{opset}.onnx"
    torch.onnx.export(_ConvNet().eval(), (torch.randn(2, 3, 20, 24),), str(path), opset_version=opset, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    return path


def _images(count, height, width, seed=0):
    return np.random.default_rng(seed).standard_normal((count, 3, height, width)).astype(np.float32)


@pytest.mark.parametrize("opset", [11, 12])
def test_old_opsets_are_raised_to_13_for_per_channel_weights(opset, tmp_path):
    """Per-channel DequantizeLinear needs opset 13: the written QDQ file runs, on any batch and size."""
    data = [_images(4, 20, 24, seed) for seed in range(2)]
    sim = lowbit.quantize(_export(tmp_path, opset), data)
    paths = sim.export(tmp_path, name="q")
    written = onnx.load(str(paths.qdq_onnx))
    assert {o.domain: o.version for o in written.opset_import}[""] == 13
    axes = [a.i for n in written.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes, "no per-channel weight"
    runtime = session(paths.qdq_onnx)
    np.testing.assert_array_equal(runtime.run(None, {"x": data[0]})[0], sim(data[0])[0])
    assert runtime.run(None, {"x": _images(3, 40, 30)})[0].shape == (3, 5)


def test_minus_one_dimensions_are_dynamic(tmp_path):
    """Some exporters write -1 for a dynamic axis: batches of any size are fed."""
    path = _export(tmp_path, 13)
    model = onnx.load(str(path))
    for index in (0, 2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[index].Clear()
        model.graph.input[0].type.tensor_type.shape.dim[index].dim_value = -1
    data = [_images(16, 48, 64, seed) for seed in range(2)]
    sim = lowbit.quantize(model, data)
    assert sim(data[0])[0].shape == (16, 5)


@pytest.mark.slow
def test_damaged_files_fail_with_one_lowbit_error(tmp_path):
    """Random bytes overwritten in a real model: it loads, or fails with a LowbitError (never a raw one)."""
    raw = (SILERO / "silero_vad_16k_op15.onnx").read_bytes()
    rng = np.random.default_rng(0)
    failures = 0
    for trial in range(40):
        damaged = bytearray(raw)
        for position in rng.integers(0, len(damaged), 20):
            damaged[position] = int(rng.integers(0, 256))
        path = tmp_path / f"damaged{trial}.onnx"
        path.write_bytes(bytes(damaged))
        try:
            lowbit.onnx.OnnxQuantSim(path)
        except LowbitError:
            failures += 1
    assert failures > 0


OCR = Path(importlib.util.find_spec("rapidocr_onnxruntime").submodule_search_locations[0]) / "models"


@pytest.mark.parametrize("name, shape, wider", [
    ("ch_ppocr_mobile_v2.0_cls_infer.onnx", (8, 3, 48, 192), (2, 3, 48, 256)),
    ("ch_PP-OCRv4_rec_infer.onnx", (4, 3, 48, 160), (2, 3, 48, 320)),
    ("ch_PP-OCRv4_det_infer.onnx", (2, 3, 96, 128), (1, 3, 160, 96)),
])
@pytest.mark.slow
def test_rapidocr_models_quantize_at_old_opsets_and_keep_their_dynamic_axes(name, shape, wider, tmp_path):
    """PaddleOCR's models as RapidOCR ships them (opset 11/12, inputs such as (-1, 3, ?, ?)): the sim is
    the written QDQ file, which runs at other batch sizes and widths."""
    rng = np.random.default_rng(0)
    data = [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(2)]
    sim = lowbit.quantize(OCR / name, data)
    assert sim.summary()["quantizers"]["weight"] >= 47
    paths = sim.export(tmp_path, name="ocr", verify=data)
    assert all(o.max_abs_error == 0 for o in paths.fidelity.outputs), paths.fidelity.row()
    runtime = session(paths.qdq_onnx)
    other = rng.uniform(-1, 1, wider).astype(np.float32)
    np.testing.assert_array_equal(runtime.run(None, {runtime.get_inputs()[0].name: other})[0], sim(other)[0])
