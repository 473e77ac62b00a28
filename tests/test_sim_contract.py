"""One sim contract: a QuantSim and an OnnxQuantSim of the same network answer the same verbs with
the same meaning (run_on, calibrate, load_encodings, export, summary) and fail with the same errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import DataError, InputError, NotCalibratedError
from lowbit.onnx.quantsim import OnnxQuantSim


def _network() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 1), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5)).eval()


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """The same network as a QuantSim and (exported) as an OnnxQuantSim, both calibrated on the same batches."""
    model = _network()
    data = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    path = tmp_path_factory.mktemp("contract") / "net.onnx"
    torch.onnx.export(model, (data[0],), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}})
    torch_sim = lowbit.quantize(model, data)
    onnx_sim = lowbit.quantize(str(path), [d.numpy() for d in data])
    return torch_sim, onnx_sim, data


def test_run_on_returns_each_batchs_outputs_on_both(sims):
    torch_sim, onnx_sim, data = sims
    torch_outputs, onnx_outputs = torch_sim.run_on(data), onnx_sim.run_on([d.numpy() for d in data])
    assert len(torch_outputs) == len(onnx_outputs) == len(data)
    with torch.no_grad():
        for batch, from_torch, from_onnx in zip(data, torch_outputs, onnx_outputs):
            assert torch.equal(from_torch, torch_sim(batch))
            np.testing.assert_array_equal(from_onnx[0], onnx_sim(batch.numpy())[0])


def test_summary_export_and_encodings_mean_the_same(sims, tmp_path):
    torch_sim, onnx_sim, data = sims
    shared = {"capture", "note", "quantizers", "target", "runtime", "float_ops"}
    assert shared <= set(torch_sim.summary()) and shared <= set(onnx_sim.summary())
    assert torch_sim.summary()["quantizers"] == onnx_sim.summary()["quantizers"]
    for name, sim in (("torch", torch_sim), ("onnx", onnx_sim)):
        paths = sim.export(tmp_path / name, name="net")
        reloaded = lowbit.load_encodings(sim, paths.encodings)
        assert reloaded is sim and sim.is_calibrated


def test_both_refuse_the_same_bad_calls(tmp_path):
    model = _network()
    path = tmp_path / "net.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}})
    for sim in (lowbit.QuantSim(model, torch.randn(1, 3, 8, 8)), OnnxQuantSim(path)):
        with pytest.raises(DataError):
            sim.calibrate([])
        with pytest.raises(DataError, match="batch 0 holds no tensor"):
            sim.calibrate(["not a tensor"])
        if isinstance(sim, lowbit.QuantSim):
            with pytest.raises(InputError, match="torch.from_numpy"):
                sim.calibrate([np.zeros((2, 3, 8, 8), np.float32)])
        with pytest.raises(InputError):  # 9×9 images: the model's Linear cannot take them
            sim.calibrate([torch.randn(2, 3, 9, 9)])
        with pytest.raises(NotCalibratedError):
            sim.run_on([torch.randn(2, 3, 8, 8)])
        with pytest.raises(NotCalibratedError):
            sim(torch.randn(2, 3, 8, 8))
        with pytest.raises(NotCalibratedError):
            sim.export(tmp_path / "never", name="net")


@pytest.mark.parametrize("target", ["default", "transformer"])
def test_an_onnx_export_loads_into_a_fresh_sim(sims, target, tmp_path):
    """Encodings of quantized model outputs and of op inputs are named as the export renames them."""
    _, _, data = sims
    path = tmp_path / "net.onnx"
    torch.onnx.export(_network(), (data[0],), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}})
    batches = [d.numpy() for d in data]
    calibrated = lowbit.quantize(str(path), batches, target=target)
    assert any(p.argument for p in calibrated.points) == (target == "transformer")
    paths = calibrated.export(tmp_path / "out", name="net")
    fresh = OnnxQuantSim(path, target=target).load_encodings(paths.encodings)
    for batch in batches:
        np.testing.assert_array_equal(fresh(batch)[0], calibrated(batch)[0])
