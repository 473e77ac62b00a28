"""The `lowbit` command end to end: real models, real files, and one-line errors on bad input."""

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from lowbit.cli import cli, main
from lowbit.zoo import tiny_resnet

TINY = "lowbit.zoo.resnet:tiny_resnet"
FILES = ("model.onnx", "model.encodings", "model.qdq.onnx")


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    """No progress bars in tests."""
    monkeypatch.setenv("LOWBIT_QUIET", "1")


@pytest.fixture
def npy(tmp_path):
    """16 seeded random 32x32 images as a .npy file."""
    path = tmp_path / "data.npy"
    np.save(path, np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    return path


def invoke(args):
    """Run the command in-process; returns the click Result."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_exported(result, out):
    """The command succeeded, wrote the three files and printed the summary table."""
    assert result.exit_code == 0, result.output
    assert all((out / name).stat().st_size > 0 for name in FILES)
    assert "| quantizers placed |" in result.output and "| fidelity (sim vs onnxruntime) |" in result.output


@pytest.mark.parametrize("args", [["--help"], ["quantize", "--help"], ["demo", "--help"]])
def test_help(args):
    result = invoke(args)
    assert result.exit_code == 0 and "Usage:" in result.output


def test_quantize_help_documents_model_kinds():
    output = invoke(["quantize", "--help"]).output
    assert "module:factory" in output and "TorchScript" in output and ".pt2" in output and ".onnx" in output


@pytest.mark.slow
def test_quantize_npy(npy, tmp_path):
    out = tmp_path / "out"
    result = invoke(["quantize", TINY, "--data", npy, "--out", out, "--scheme", "percentile"])
    assert_exported(result, out)
    assert "weight 13" in result.output


@pytest.mark.slow
def test_quantize_pt_tensor(tmp_path):
    torch.save(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)), tmp_path / "data.pt")
    out = tmp_path / "out"
    assert_exported(invoke(["quantize", TINY, "--data", tmp_path / "data.pt", "--out", out, "--batch-size", 4,
                            "--target", "cpu-int8", "--name", "model"]), out)


@pytest.mark.slow
def test_quantize_image_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"{index}.png")
    out = tmp_path / "out"
    assert_exported(invoke(["quantize", TINY, "--data", images, "--out", out, "--input-shape", "1,3,32,32"]), out)


@pytest.mark.slow
def test_quantize_torchscript_file(npy, tmp_path):
    model_path = tmp_path / "tiny.pt"
    torch.jit.trace(tiny_resnet().eval(), torch.randn(1, 3, 32, 32)).save(model_path)
    out = tmp_path / "out"
    result = invoke(["quantize", model_path, "--data", npy, "--out", out])
    assert_exported(result, out)
    assert "weight 13" in result.output


@pytest.mark.slow
def test_quantize_pt2_file_quantizes_weights(npy, tmp_path):
    """An aten-level .pt2 graph gets the eager model's weight quantizers; its static batch of 2 is checked
    to be batch-independent, so the default --batch-size 16 runs, with a note."""
    model_path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(tiny_resnet().eval(), (torch.randn(2, 3, 32, 32),)), model_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["quantize", str(model_path), "--data", str(npy), "--out", str(out)],
                                catch_exceptions=False)
    assert_exported(result, out)
    assert "weight 13" in result.output and "top-1 agreement 100.00%" in result.output


def tiny_onnx(path):
    """tiny_resnet exported to ONNX with a dynamic batch (BatchNorm folded by the exporter)."""
    torch.onnx.export(tiny_resnet().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    return path


def test_quantize_onnx_file(npy, tmp_path):
    out = tmp_path / "out"
    result = invoke(["quantize", tiny_onnx(tmp_path / "tiny.onnx"), "--data", npy, "--out", out])
    assert_exported(result, out)
    assert "weight 13" in result.output and "| capture mode | onnx |" in result.output
    assert "top-1 agreement 100.00%" in result.output


@pytest.mark.slow
def test_quantize_onnx_file_with_every_technique(npy, tmp_path):
    out = tmp_path / "out"
    result = invoke(["quantize", tiny_onnx(tmp_path / "tiny.onnx"), "--data", npy, "--out", out, "--weights", "4",
                     "--techniques", "equalize,sequential_mse,bias_correction"])
    assert_exported(result, out)
    assert "| technique | equalize: 4 layer groups" in result.output
    assert "| technique | sequential mse: 13 layers" in result.output
    assert "| technique | bias correction (empirical): 13 layers" in result.output
    assert "top-1 agreement 100.00%" in result.output


def test_onnx_file_with_data_of_the_wrong_shape_is_one_line_error(tmp_path, capsys):
    data = tmp_path / "wrong.npy"
    np.save(data, np.zeros((4, 3, 32, 30), dtype=np.float32))
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(tiny_onnx(tmp_path / "tiny.onnx")), "--data", str(data), "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1
    assert error == "error: input 'image' has shape (4, 3, 32, 30); the model expects (?, 3, 32, 32)"
    assert not (tmp_path / "o").exists()


def test_pt2_with_batch_dependent_graph_is_one_line_error(tmp_path, capsys):
    class BatchBound(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x.reshape(2, -1, 4)).softmax(1).reshape(x.shape)

    model_path, data = tmp_path / "bound.pt2", tmp_path / "data.npy"
    torch.export.save(torch.export.export(BatchBound().eval(), (torch.randn(2, 8, 4),)), model_path)
    np.save(data, np.random.default_rng(0).standard_normal((8, 8, 4)).astype(np.float32))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(model_path), "--data", str(data), "--out", str(out), "--batch-size", "4"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "static batch size of 2" in lines[0] and "--batch-size 2" in lines[0]


@pytest.mark.parametrize("case", ["missing model file", "no such module", "empty folder", "nan data",
                                  "unknown target", "unknown technique", "adaround with bias correction"])
def test_bad_input_is_one_line_error(case, npy, tmp_path, capsys):
    model, data, extra = TINY, npy, []
    if case == "missing model file":
        model = tmp_path / "missing.pt"
    elif case == "no such module":
        model = "nosuchmodule:factory"
    elif case == "empty folder":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "nan data":
        array = np.zeros((4, 3, 32, 32), np.float32)
        array[1, 0, 0, 0] = np.nan
        data = tmp_path / "nan.npy"
        np.save(data, array)
    elif case == "unknown target":
        extra = ["--target", "no-such-target"]
    elif case == "unknown technique":
        extra = ["--techniques", "gptq"]
    else:
        extra = ["--techniques", "adaround,bias_correction"]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["quantize", str(model), "--data", str(data), "--out", str(out), *extra])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    result = invoke(["demo", "--quick", "--out", out])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    fractions = [*results["accuracy"].values(), *results["agreement_with_fp32"].values(),
                 results["sim_vs_onnxruntime"]["top1_agreement"]]
    assert all(0.0 <= value <= 1.0 for value in fractions)
    assert results["agreement_with_fp32"]["sim"] >= 0.8
    assert all((out / f"mobilenet_v2{suffix}").is_file() for suffix in (".onnx", ".encodings", ".qdq.onnx"))



@pytest.mark.slow
def test_quantize_with_techniques(npy, tmp_path):
    """--techniques runs equalization (which folds BatchNorm) before calibration, sequential MSE and bias
    correction after, and the summary has one line per step."""
    out = tmp_path / "out"
    result = invoke(["quantize", TINY, "--data", npy, "--out", out, "--techniques",
                     "bias_correction,sequential_mse,equalize"])
    assert_exported(result, out)
    steps = [line.split("|")[2].strip() for line in result.output.splitlines() if line.startswith("| technique |")]
    assert [step.split(":")[0] for step in steps] == ["equalize", "calibrate", "sequential mse",
                                                    "bias correction (empirical)"]
    assert steps[0].endswith("(BatchNorm folded)")


@pytest.mark.slow
def test_qat_trains_and_exports(npy, tmp_path):
    out = tmp_path / "out"
    result = invoke(["qat", TINY, "--data", npy, "--out", out, "--target", "w4a8", "--steps", 3, "--batch-size", 8,
                     "--lr", "1e-4"])
    assert_exported(result, out)
    assert "| technique | qat: 3 steps (1.5 epochs), loss " in result.output


@pytest.mark.slow
def test_qat_under_torchrun_writes_once(npy, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "lowbit.cli", "qat", TINY, "--data", str(npy), "--out", str(out), "--target", "w4a8",
                          "--steps", "2", "--batch-size", "4"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("| technique | qat: 2 steps") == 1  # rank 0 reports
    assert all((out / name).stat().st_size > 0 for name in FILES)


def test_qat_of_an_onnx_file_is_one_line(npy, tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_resnet().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False,
                      dynamic_axes={"input": {0: "batch"}}, input_names=["input"])
    with pytest.raises(SystemExit) as exit_info:
        main(["qat", str(path), "--data", str(npy), "--out", str(tmp_path / "out"), "--steps", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: qat trains a PyTorch QuantSim, not a OnnxQuantSim")


def test_compress_writes_a_smaller_model_that_runs_as_compressed(npy, tmp_path):
    import onnxruntime
    out = tmp_path / "out"
    result = invoke(["compress", TINY, "--data", npy, "--out", out, "--macs", "0.6", "--fine-tune-steps", 2,
                     "--batch-size", 8, "--methods", "channel_pruning,weight_svd"])
    assert result.exit_code == 0, result.output
    kept = re.search(r"MACs [\d.]+ M → [\d.]+ M \((\d+)%\)", result.output.splitlines()[0])
    assert kept and int(kept.group(1)) <= 61, result.output
    program = torch.export.load(out / "model.pt2").module()
    x = torch.from_numpy(np.load(npy)[:4])
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    from_onnx = session.run(None, {"input_0": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(from_onnx, program(x).numpy(), rtol=1e-4, atol=1e-4)
    assert (out / "compression.html").stat().st_size > 0
    assert sum(p.numel() for p in program.parameters()) < sum(p.numel() for p in tiny_resnet().parameters())


def test_compress_of_an_onnx_file_is_one_line(npy, tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_resnet().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", str(path), "--data", str(npy), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: compress takes a PyTorch model")
    assert not (tmp_path / "out").exists()


def test_quantize_writes_torchscript_beside_the_export(npy, tmp_path):
    """--torchscript: NAME.torchscript.pt, named in the summary, computes the exported sim's outputs (rebuilt here
    from the same seeded weights, checked against the exported FP32 file, and the exported encodings)."""
    import lowbit
    from lowbit.runtime import run, session
    out = tmp_path / "out"
    torch.manual_seed(0)
    result = invoke(["quantize", TINY, "--data", npy, "--out", out, "--name", "tiny", "--torchscript"])
    assert result.exit_code == 0, result.output
    path = out / "tiny.torchscript.pt"
    assert f"TorchScript: {path}" in result.output
    images = torch.from_numpy(np.load(npy))
    torch.manual_seed(0)
    model = tiny_resnet().eval()
    with torch.no_grad():
        np.testing.assert_allclose(run(session(out / "tiny.onnx"), images[:5])[0], model(images[:5]), atol=1e-5)
    sim = lowbit.quantize(model, [images]).load_encodings(out / "tiny.encodings")
    with torch.no_grad():
        assert torch.equal(torch.jit.load(str(path))(images[:5]), sim(images[:5]))
