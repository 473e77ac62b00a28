"""TorchScript modules through the Python API: on their own or inside a Python model, with several
inputs and outputs, quantized like the eager model; one they cannot be converted names why."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import GraphCaptureError

sys.path.insert(0, str(Path(__file__).parent.parent / "fidelity"))
from fidelity_zoo_models import build  # noqa: E402


class _Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, image, side):
        return self.inner(image, side)


@pytest.fixture(scope="module")
def scripted():
    model, (image, side) = build("two_inputs")
    batches = [{"image": image[i:i + 16], "side": side[i:i + 16]} for i in range(0, 64, 16)]
    return model, torch.jit.script(model), batches


@pytest.mark.slow
@pytest.mark.parametrize("form", ["script", "wrapped script"])
def test_scripts_quantize_like_the_eager_model(scripted, form, tmp_path):
    model, script, batches = scripted
    eager = lowbit.quantize(model, batches)
    sim = lowbit.quantize(script if form == "script" else _Wrapper(script), batches)
    assert sim.summary()["quantizers"] == eager.summary()["quantizers"]
    assert sim.summary()["quantizers"]["weight"] == 5
    with torch.no_grad():
        for ours, theirs in zip(sim(batches[0]), eager(batches[0])):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    fidelity = sim.export(tmp_path, verify=batches).fidelity
    assert len(fidelity.outputs) == 2 and all(o.max_error_lsb == 0 for o in fidelity.outputs), fidelity.row()


def test_shipped_script_with_control_flow_is_one_clear_error():
    """Silero VAD's TorchScript file branches on the sample rate (prim::If), which torch's converter
    cannot turn into a graph: one GraphCaptureError saying so (its ONNX files quantize instead)."""
    folder = Path(importlib.util.find_spec("silero_vad").submodule_search_locations[0]) / "data"
    script = torch.jit.load(str(folder / "silero_vad.jit"), map_location="cpu")
    with pytest.raises(GraphCaptureError, match="cannot convert this TorchScript module to a graph: .*prim::If"):
        lowbit.quantize(script, [(torch.randn(2, 512) * 0.1, 16000)])
