"""The `lowbit` command on models with several inputs and outputs, non-image inputs and old opsets:
data keyed by input name, images only for image inputs, every output's fidelity, one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from lowbit.cli import cli, main

sys.path.insert(0, str(Path(__file__).parent / "fidelity"))
from fidelity_zoo_models import build  # noqa: E402

FILES = ("model.onnx", "model.encodings", "model.qdq.onnx")


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("LOWBIT_QUIET", "1")


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_line_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    """The zoo's two-input, two-output model as a scripted TorchScript file and an ONNX file, with its
    data as a .pt dict and a .npz file."""
    folder = tmp_path_factory.mktemp("two_inputs")
    model, (image, side) = build("two_inputs")
    torch.jit.save(torch.jit.script(model), folder / "two.ts")
    torch.onnx.export(model, (image[:2], side[:2]), str(folder / "two.onnx"), dynamo=False,
                      input_names=["image", "side"], output_names=["logits", "value"],
                      dynamic_axes={"image": {0: "n"}, "side": {0: "n"}})
    torch.save({"image": image, "side": side}, folder / "two.pt")
    np.savez(folder / "two.npz", image=image.numpy(), side=side.numpy())
    np.save(folder / "image_only.npy", image.numpy())
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("model, data", [("two.ts", "two.pt"), ("two.ts", "two.npz"), ("two.onnx", "two.npz")])
def test_several_inputs_from_data_keyed_by_name(two_inputs, model, data, tmp_path):
    out = tmp_path / "out"
    result = invoke(["quantize", two_inputs / model, "--data", two_inputs / data, "--out", out])
    assert result.exit_code == 0, result.output
    assert all((out / name).stat().st_size > 0 for name in FILES)
    first, second = ("logits", "value") if model.endswith(".onnx") else ("output_0", "output_1")
    assert f"| fidelity (sim vs onnxruntime), {first} | top-1 agreement 100.00% on 64 samples, max error 0.0 LSB" \
        in result.output
    assert f"| fidelity (sim vs onnxruntime), {second} | max error 0.0 LSB" in result.output
    assert "| onnxruntime latency, one sample | FP32 " in result.output


def test_one_array_for_a_model_with_two_inputs_names_the_fix(two_inputs, tmp_path, capsys):
    out = tmp_path / "out"
    error = one_line_error(["quantize", two_inputs / "two.onnx", "--data", two_inputs / "image_only.npy",
                            "--out", out], capsys)
    assert "'side'" in error and ".npz" in error
    assert not out.exists()


def _images(folder: Path, count=4) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return folder


def test_image_folder_for_a_non_image_model_names_what_it_needs(tmp_path, capsys):
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(torch.nn.Sequential(torch.nn.Linear(16, 4)), (torch.randn(2, 16),), str(path), dynamo=False,
                      input_names=["features"], dynamic_axes={"features": {0: "n"}})
    out = tmp_path / "out"
    error = one_line_error(["quantize", path, "--data", _images(tmp_path / "images"), "--out", out], capsys)
    assert error == ("error: model input 'features' has shape (?, 16), not an image batch (N, 3, H, W): "
                     "give --data as a .npy, .npz or .pt file")
    assert not out.exists()


class _FullyConvolutional(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


def test_image_preprocessing_is_printed_and_follows_the_input_shape(tmp_path):
    path = tmp_path / "fcn.onnx"
    torch.onnx.export(_FullyConvolutional().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, opset_version=12)
    images = _images(tmp_path / "images")
    runner = CliRunner()
    result = runner.invoke(cli, ["quantize", str(path), "--data", str(images), "--out", str(tmp_path / "a"),
                                 "--input-shape", "1,3,48,64"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "preprocessing: 4 images" in result.output and "centre crop 48x64" in result.output
    result = runner.invoke(cli, ["quantize", str(path), "--data", str(images), "--out", str(tmp_path / "b")],
                           catch_exceptions=False)
    assert result.exit_code == 0 and "centre crop 224x224" in result.output


def test_input_shape_of_any_rank_checks_array_data(tmp_path, capsys):
    path = tmp_path / "audio.onnx"
    model = torch.nn.Sequential(torch.nn.Unflatten(1, (1, 400)), torch.nn.Conv1d(1, 4, 9, stride=4),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 98, 3)).eval()
    torch.onnx.export(model, (torch.randn(2, 400),), str(path), dynamo=False, input_names=["wave"],
                      dynamic_axes={"wave": {0: "n"}})
    data = tmp_path / "wave.npy"
    np.save(data, np.random.default_rng(0).standard_normal((8, 400)).astype(np.float32))
    result = invoke(["quantize", path, "--data", data, "--out", tmp_path / "out", "--input-shape", "1,400"])
    assert result.exit_code == 0, result.output
    error = one_line_error(["quantize", path, "--data", data, "--out", tmp_path / "o2", "--input-shape", "1,300"],
                           capsys)
    assert error == "error: data samples have shape (400,), --input-shape expects (300,)"
