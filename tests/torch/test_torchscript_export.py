"""sim.export_torchscript: a file torch.jit.load runs in a process that cannot import lowbit, computing the sim's
outputs bit for bit at any batch size, for each emulated CPU kind and after training; bad input is one line."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit
from lowbit.errors import ExportError, NotCalibratedError, SpecError
from lowbit.zoo import tiny_resnet

RUN_WITHOUT_LOWBIT = textwrap.dedent("""
    import sys
    sys.modules["lowbit"] = None  # any import of lowbit now raises ImportError
    import torch
    try:
        import lowbit
    except ImportError:
        pass
    else:
        raise SystemExit("lowbit imported")
    model = torch.jit.load(sys.argv[1])
    inputs = torch.load(sys.argv[2])
    with torch.no_grad():
        torch.save([model(x) for x in inputs], sys.argv[3])
""")


def test_file_runs_without_lowbit_and_equals_the_sim(mobilenet_sim, eval_batches, tmp_path):
    """The real MobileNetV2 (cpu-int8): the file, loaded where lowbit cannot be imported, gives the sim's outputs
    exactly at batch 25 and at batch 1 (the sim's example has batch 1; the trace ran at 2)."""
    path = mobilenet_sim.export_torchscript(tmp_path / "mobilenet_v2.pt")
    inputs = [eval_batches[0], eval_batches[1][:1]]
    torch.save(inputs, tmp_path / "inputs.pt")
    script = tmp_path / "run.py"
    script.write_text(RUN_WITHOUT_LOWBIT)
    subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
                   check=True, cwd=tmp_path, capture_output=True)
    outputs = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        for x, output in zip(inputs, outputs):
            assert torch.equal(output, mobilenet_sim(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs.pt", "mobilenet_v2.pt", "out.pt", "run.py"]


def test_each_runtime_setting_is_kept_in_its_file(mobilenet, calibration_batches, tmp_path):
    """Sims predicting the two x86 kinds (int16 pair saturation or not) give different outputs on W8A8 MobileNetV2;
    each one's file reproduces its own sim, on whichever CPU runs the test."""
    avx2 = lowbit.quantize(mobilenet, calibration_batches, target="default", runtime="onnxruntime-cpu-avx2")
    vnni = copy.deepcopy(avx2)
    vnni.runtime = "onnxruntime-cpu-vnni"
    x = calibration_batches[1]
    with torch.no_grad():
        assert not torch.equal(avx2(x), vnni(x))
        for name, sim in (("avx2", avx2), ("vnni", vnni)):
            loaded = torch.jit.load(str(sim.export_torchscript(tmp_path / f"{name}.pt")))
            assert torch.equal(loaded(x), sim(x)), name


class FunctionalBlock(nn.Module):
    """Functional convolutions and a residual add, as people write models."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.w2 = nn.Parameter(torch.randn(8, 8, 3, 3) * 0.1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(F.conv2d(x, self.w1, padding=1))
        y = y + F.relu(F.conv2d(y, self.w2, padding=1))
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("build", [tiny_resnet, FunctionalBlock], ids=["tiny_resnet", "functional"])
def test_trained_sim_exports_what_it_computes(build, tmp_path):
    """After QAT with learned ranges at W4A8, the file equals the trained sim (learned encodings as constants)."""
    torch.manual_seed(0)
    model = build().eval()
    data = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    sim = lowbit.quantize(model, data, target="w4a8")
    lowbit.qat(sim, data, steps=3, lr=1e-3)
    loaded = torch.jit.load(str(sim.export_torchscript(tmp_path / "trained.pt")))
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), sim(x))


class BatchDependent(nn.Module):
    """A forward whose path depends on the batch size, which a trace cannot keep."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y * 2 if x.shape[0] > 1 else y


def test_bad_input_is_one_line_and_leaves_no_file(calibration_batches, tmp_path):
    model = tiny_resnet().eval()
    data = [torch.randn(4, 3, 16, 16)]
    with pytest.raises(NotCalibratedError, match="call sim.calibrate"):
        lowbit.QuantSim(model, data[0]).export_torchscript(tmp_path / "uncalibrated.pt")
    sim = lowbit.quantize(model, data)
    with pytest.raises(ExportError, match="folder .* does not exist"):
        sim.export_torchscript(tmp_path / "missing" / "model.pt")
    with pytest.warns(UserWarning, match="leaf modules"):
        dependent = lowbit.quantize(BatchDependent(), [torch.randn(1, 3, 8, 8)], example_input=torch.randn(1, 3, 8, 8))
    with pytest.raises(ExportError, match="computes differently from the sim at batch 1"):
        dependent.export_torchscript(tmp_path / "dependent.pt")
    onnx_sim = lowbit.quantize(sim.export(tmp_path / "onnx").onnx, [d.numpy() for d in data])
    with pytest.raises(SpecError, match="no TorchScript form"):
        onnx_sim.export_torchscript(tmp_path / "onnx.pt")
    assert not any(p.suffix in (".pt", ".tmp") for p in tmp_path.rglob("*"))
