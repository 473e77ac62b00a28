"""``lowbit.quantize`` hands ONNX models (path or ModelProto) to the ONNX front end."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import lowbit
from lowbit.errors import DataError, SpecError
from lowbit.onnx import OnnxQuantSim
from lowbit.quant.encodings_file import read_encodings
from lowbit.runtime import session
from lowbit.zoo import tiny_resnet


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    torch.manual_seed(0)
    torch.onnx.export(tiny_resnet().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    return path


def batches():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((8, 3, 32, 32)).astype(np.float32) for _ in range(3)]


@pytest.mark.parametrize("form", ["path", "str", "proto"])
def test_quantize_takes_an_onnx_path_or_proto(tiny_path, form):
    model = {"path": tiny_path, "str": str(tiny_path), "proto": onnx.load(tiny_path)}[form]
    sim = lowbit.quantize(model, batches(), scheme="mean_minmax")
    assert isinstance(sim, OnnxQuantSim) and sim.is_calibrated
    assert sim.summary()["quantizers"]["weight"] == 13
    data = batches()[0]
    fp32 = session(tiny_path).run(None, {"image": data})[0]
    simulated = sim(data)[0]
    # W8A8 through 13 layers: quantization noise of a few percent of the FP32 logits, not more
    assert simulated.shape == fp32.shape
    assert np.linalg.norm(simulated - fp32) <= 0.1 * np.linalg.norm(fp32)


def test_analytical_bias_correction_is_refused_with_one_clear_line(tiny_path):
    sim = lowbit.quantize(tiny_path, batches())
    with pytest.raises(SpecError, match="not available for ONNX models yet"):
        lowbit.correct_bias(sim, mode="analytical")


def test_a_single_array_is_not_taken_for_a_list_of_batches(tiny_path):
    with pytest.raises(DataError, match="not a single array"):
        lowbit.quantize(tiny_path, batches()[0])


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["minmax", "mean_minmax", "percentile", "sqnr", "entropy"])
def test_every_scheme_gives_the_torch_front_ends_encodings(scheme, tmp_path):
    """Both front ends on the same graph and data (the torch front end's export of tiny_resnet): min-max
    schemes are reduced inside onnxruntime, histogram schemes see whole tensors; all match torch's."""
    torch.manual_seed(0)
    data = [torch.from_numpy(b) for b in batches()]
    torch_sim = lowbit.quantize(tiny_resnet().eval(), data, scheme=scheme)
    exported = torch_sim.export(tmp_path / "torch", "tiny")
    onnx_sim = OnnxQuantSim(exported.onnx, scheme=scheme).calibrate(data)
    expected = read_encodings(exported.encodings).activation
    got = read_encodings(onnx_sim.export(tmp_path / "onnx", "tiny").encodings).activation
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name].scale, expected[name].scale, rtol=2e-3, atol=0, msg=name)
