"""A calibrated QuantSim survives copy.deepcopy and torch.save / torch.load unchanged."""

import copy
import io

import torch

import lowbit
from lowbit.zoo import tiny_resnet


def _calibrated_sim():
    torch.manual_seed(0)
    return lowbit.quantize(tiny_resnet().eval(), [torch.randn(4, 3, 32, 32) for _ in range(2)])


def test_deepcopy_gives_identical_outputs():
    sim = _calibrated_sim()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(sim(x), copy.deepcopy(sim)(x))


def test_save_and_load_give_identical_outputs_and_encodings(tmp_path):
    sim = _calibrated_sim()
    buffer = io.BytesIO()
    torch.save(sim, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(sim(x), loaded(x))
    for key, quantizer in sim.quantizers().items():
        assert torch.equal(quantizer.scale, loaded.quantizers()[key].scale)
    assert loaded.target == sim.target
    assert all(path.is_file() for path in loaded.export(tmp_path))
