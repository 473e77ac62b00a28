"""The int8-vs-FP32 latency check names what onnxruntime leaves in float between Q/DQ pairs."""

from __future__ import annotations

import sys
from pathlib import Path

import lowbit
from lowbit.speed import Speed, measure_speed

sys.path.insert(0, str(Path(__file__).parent / "fidelity"))
from fidelity_zoo_models import build  # noqa: E402


def test_prelu_runs_in_float_between_qdq_pairs(tmp_path):
    """onnxruntime 1.32 has no integer PRelu: the detector's three PReLUs stay float, its convolutions
    and Softmax do not."""
    model, images = build("two_head_detector")
    batches = list(images.split(16))
    paths = lowbit.quantize(model, batches).export(tmp_path)
    speed = measure_speed(paths.onnx, paths.qdq_onnx, batches[0], runs=3)
    assert speed.float_ops == {"PRelu": 3}
    assert speed.float_ms > 0 and speed.int8_ms > 0
    assert "in float between Q/DQ: PRelu ×3" in speed.row()


def test_row_warns_only_when_int8_is_slower():
    assert "warning" in Speed(1.0, 2.0, {}).row() and "(0.50x)" in Speed(1.0, 2.0, {}).row()
    assert "warning" not in Speed(2.0, 1.0, {}).row() and "(2.00x)" in Speed(2.0, 1.0, {}).row()
