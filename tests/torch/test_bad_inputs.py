"""Bad inputs give a LowbitError subclass with a one-line message; edge cases just work."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import lowbit
import lowbit.fidelity
from lowbit.errors import (DataError, EncodingsFileError, ExportError, InputError, LowbitError, SpecError,
                           TargetError)
from lowbit.runtime import run, session


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.fixture
def small():
    torch.manual_seed(0)
    return Small().eval()


@pytest.fixture
def batches():
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(2)]


def _raises(error_type, call):
    with pytest.raises(error_type) as info:
        call()
    assert isinstance(info.value, LowbitError)
    message = str(info.value)
    assert message and "\n" not in message, repr(message)
    assert "Traceback" not in message
    return message


def test_wrong_shape_example(small):
    _raises(InputError, lambda: lowbit.QuantSim(small, torch.randn(4, 5, 8, 8)))
    _raises(InputError, lambda: lowbit.quantize(small, [torch.randn(4, 8)]))


def test_string_example(small):
    _raises(InputError, lambda: lowbit.QuantSim(small, "a picture"))


@pytest.mark.parametrize("bits", [1, 17])
def test_bad_param_bits(small, batches, bits):
    message = _raises(SpecError, lambda: lowbit.QuantSim(small, batches[0], param_bits=bits))
    assert str(bits) in message
    _raises(SpecError, lambda: lowbit.quantize(small, batches, param_bits=bits))


def test_bad_act_bits(small, batches):
    _raises(SpecError, lambda: lowbit.QuantSim(small, batches[0], act_bits=1))


def test_unknown_scheme(small, batches):
    message = _raises(SpecError, lambda: lowbit.QuantSim(small, batches[0], scheme="median"))
    assert "minmax" in message


def test_calibrate_empty(small, batches):
    sim = lowbit.QuantSim(small, batches[0])
    _raises(DataError, lambda: sim.calibrate([]))
    _raises(DataError, lambda: lowbit.quantize(small, []))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_calibrate_not_finite(small, batches, bad):
    poisoned = batches[1].clone()
    poisoned[2, 1, 3, 4] = bad
    sim = lowbit.QuantSim(small, batches[0])
    _raises(DataError, lambda: sim.calibrate([batches[0], poisoned]))
    assert not sim.is_calibrated or all(torch.isfinite(q.scale).all() for q in sim.quantizers().values())


def test_unknown_target(small, batches):
    message = _raises(TargetError, lambda: lowbit.QuantSim(small, batches[0], target="gpu-int3"))
    assert "default" in message


def test_malformed_target_file(small, batches, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"defaults": {"ops": {"is_output_quantized": "True"}', encoding="utf-8")
    _raises(TargetError, lambda: lowbit.QuantSim(small, batches[0], target=str(path)))
    _raises(TargetError, lambda: lowbit.QuantSim(small, batches[0], target=tmp_path / "missing.json"))


@pytest.fixture
def calibrated(small, batches, tmp_path):
    sim = lowbit.quantize(small, batches)
    paths = sim.export(tmp_path / "export")
    return sim, paths


def test_malformed_encodings_file(small, batches, calibrated, tmp_path):
    path = tmp_path / "bad.encodings"
    path.write_text("{not json", encoding="utf-8")
    fresh = lowbit.quantize(small, batches)
    _raises(EncodingsFileError, lambda: lowbit.load_encodings(fresh, path))
    path.write_text(json.dumps({"version": "1.0.0", "activation_encodings": 3}), encoding="utf-8")
    _raises(EncodingsFileError, lambda: lowbit.load_encodings(fresh, path))
    _raises(EncodingsFileError, lambda: lowbit.load_encodings(fresh, tmp_path / "absent.encodings"))


def test_encodings_names_not_in_model(small, batches, calibrated, tmp_path):
    _, paths = calibrated
    document = json.loads(paths.encodings.read_text())
    entry = document["param_encodings"][0]
    entry["name"] = "no.such.layer.weight"
    path = tmp_path / "renamed.encodings"
    path.write_text(json.dumps(document), encoding="utf-8")
    fresh = lowbit.quantize(small, batches)
    message = _raises(EncodingsFileError, lambda: lowbit.load_encodings(fresh, path))
    assert "no.such.layer.weight" in message


def test_failed_export_leaves_no_files(calibrated, tmp_path, monkeypatch):
    sim, _ = calibrated

    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter exploded\nwith a second line")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    out = tmp_path / "failed"
    _raises(ExportError, lambda: sim.export(out, name="m"))
    assert not out.exists() or list(out.iterdir()) == []


def test_export_failing_while_writing_leaves_no_files(calibrated, tmp_path, monkeypatch):
    sim, _ = calibrated
    import lowbit.qdq.files as export_module

    def broken_write(*args, **kwargs):
        raise EncodingsFileError("cannot write encodings: disk full")

    monkeypatch.setattr(export_module, "write_encodings", broken_write)
    out = tmp_path / "half"
    with pytest.raises(EncodingsFileError):
        sim.export(out, name="m")
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


# --------------------------------------------------------------------------- edge cases that just work

def _finite_encodings(sim):
    for key, quantizer in sim.quantizers().items():
        assert torch.isfinite(quantizer.scale).all() and (quantizer.scale > 0).all(), key


def test_constant_and_zero_batches(small, tmp_path):
    zeros = torch.zeros(4, 3, 8, 8)
    for data in ([zeros], [torch.full((4, 3, 8, 8), 0.5)]):
        sim = lowbit.quantize(small, data)
        _finite_encodings(sim)
        with torch.no_grad():
            assert torch.isfinite(sim(data[0])).all()
            assert torch.isfinite(sim(torch.randn(2, 3, 8, 8))).all()
    paths = sim.export(tmp_path)
    assert "NaN" not in paths.encodings.read_text() and "Infinity" not in paths.encodings.read_text()


def test_dead_conv_filter(small, batches, tmp_path):
    with torch.no_grad():
        small.conv.weight[2].zero_()
        small.fc.weight[1].zero_()
    sim = lowbit.quantize(small, batches)
    _finite_encodings(sim)
    with torch.no_grad():
        out = sim(batches[0])
    assert torch.isfinite(out).all()
    paths = sim.export(tmp_path)
    text = paths.encodings.read_text()
    assert "NaN" not in text and "Infinity" not in text
    executed = run(session(paths.qdq_onnx), batches[0])[0]
    assert np.isfinite(executed).all()
    np.testing.assert_allclose(executed, out.numpy(), atol=1.01 * lowbit.fidelity.output_lsb(sim))


def test_batch_of_one(small, batches, tmp_path):
    data = [b[:1] for b in batches]
    sim = lowbit.quantize(small, data)
    with torch.no_grad():
        out = sim(data[0])
    assert out.shape == (1, 4)
    paths = sim.export(tmp_path)
    executed = run(session(paths.qdq_onnx), torch.randn(3, 3, 8, 8))[0]
    assert executed.shape == (3, 4)  # the batch axis is dynamic


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(3, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, left, right):
        return self.head(torch.relu(self.a(left) + self.b(right)))


@pytest.mark.parametrize("style", ["tuple", "dict"])
def test_tuple_and_dict_inputs(style, tmp_path):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    gen = torch.Generator().manual_seed(1)
    pairs = [(torch.randn(4, 6, generator=gen), torch.randn(4, 3, generator=gen)) for _ in range(3)]
    data = pairs if style == "tuple" else [{"left": l, "right": r} for l, r in pairs]
    # cpu-int8: its 7-bit weights never saturate onnxruntime's int16 pair sums, so the sim stays near float
    sim = lowbit.quantize(model, data, target="cpu-int8")
    with torch.no_grad():
        out = sim(data[0]) if style == "dict" else sim(*data[0])
        reference = model(*pairs[0])
    assert out.shape == (4, 2)
    assert torch.allclose(out, reference, atol=0.05 * reference.abs().max().item())
    paths = sim.export(tmp_path)
    executed = run(session(paths.qdq_onnx), data[0])[0]
    np.testing.assert_allclose(executed, out.numpy(), atol=1.01 * lowbit.fidelity.output_lsb(sim))
