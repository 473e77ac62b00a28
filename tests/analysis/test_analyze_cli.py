"""`lowbit analyze` and `lowbit autoquant` end to end on tiny_resnet (and its ONNX export): default
metric, a user eval function, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from lowbit.cli import cli, main

TINY = "lowbit.zoo.resnet:tiny_resnet"


@pytest.fixture
def npy(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_QUIET", "1")
    path = tmp_path / "data.npy"
    np.save(path, np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32))
    return path


@pytest.mark.slow
def test_default_metric_is_agreement_and_the_table_lists_the_layers(npy, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["analyze", TINY, "--data", str(npy), "--out", str(out), "--batch-size", "8"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "| layer | op | only this layer |" in result.output
    assert "top-1 agreement with float: float 1, quantized" in result.output
    assert (out / "analysis.html").stat().st_size > 0


def test_eval_fn_from_a_module_is_called_with_the_sim(npy, tmp_path, monkeypatch):
    (tmp_path / "scoring.py").write_text(
        "import numpy as np, torch\n"
        "CALLS = []\n"
        "def score(sim):\n"
        "    CALLS.append(sim)\n"
        "    enabled = sum(q.mode == 'quantize' for q in sim.quantizers().values())\n"
        "    return float(enabled)\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["analyze", TINY, "--data", str(npy), "--out", "r", "--eval-fn", "scoring:score"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    import scoring
    # the score counts enabled quantizers: every layer's "only" is its own quantizer count
    total = sum(q.mode == "quantize" for q in scoring.CALLS[0].quantizers().values())
    assert f"score: float 0, quantized {total}" in result.output


@pytest.fixture
def tiny_onnx(tmp_path):
    """tiny_resnet exported to ONNX with a dynamic batch."""
    import torch

    from lowbit.zoo import tiny_resnet
    path = tmp_path / "tiny.onnx"
    torch.manual_seed(0)
    torch.onnx.export(tiny_resnet().eval(), (torch.randn(1, 3, 32, 32),), str(path), dynamo=False,
                      input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    return path


@pytest.mark.slow
def test_an_onnx_file_is_analysed(npy, tiny_onnx, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["analyze", str(tiny_onnx), "--data", str(npy), "--out", str(out),
                                      "--batch-size", "8"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "top-1 agreement with float: float 1, quantized" in result.output and "/layer1/" in result.output
    assert (out / "analysis.html").stat().st_size > 0


@pytest.mark.parametrize("case", ["bad eval-fn", "missing onnx file"])
def test_bad_input_is_one_line(case, npy, tmp_path, capsys):
    extra = ["--eval-fn", "no_such_module:score"] if case == "bad eval-fn" else []
    model = str(tmp_path / "m.onnx") if case == "missing onnx file" else TINY
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", model, "--data", str(npy), "--out", str(tmp_path / "r"), *extra])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


@pytest.mark.slow
def test_autoquant_command_prints_the_stage_table_and_resumes(npy, tmp_path):
    args = ["autoquant", TINY, "--data", str(npy), "--out", str(tmp_path / "aq"), "--target-drop", "100%",
            "--batch-size", "8"]
    first = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "| minmax |" in first.output and "meets the target" in first.output
    second = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert "| minmax | " in second.output and "| cached |" in second.output
    assert (tmp_path / "aq" / "model.qdq.onnx").is_file() and (tmp_path / "aq" / "autoquant.html").is_file()


def test_autoquant_command_takes_an_onnx_file(npy, tiny_onnx, tmp_path):
    out = tmp_path / "aq"
    result = CliRunner().invoke(cli, ["autoquant", str(tiny_onnx), "--data", str(npy), "--out", str(out),
                                      "--target-drop", "100%", "--batch-size", "8"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "| minmax |" in result.output and "meets the target" in result.output
    assert (out / "model.qdq.onnx").is_file() and (out / "autoquant.html").is_file()


def test_autoquant_bad_drop_is_one_line(npy, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["autoquant", TINY, "--data", str(npy), "--out", str(tmp_path / "aq"), "--target-drop", "a lot"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --target-drop 'a lot' is not a number or a percentage such as 1%"
