"""The peer-benchmark harness end to end on tiny data (lowbit and onnxruntime's quantizer), so it cannot rot."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lowbit.runtime import session

HARNESS = Path(__file__).resolve().parents[2] / "bench" / "peers"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("peers")
    proc = subprocess.run([sys.executable, str(HARNESS / "run.py"), "--smoke", "--models", "mobilenet_v2",
                           "--work", str(root / "work"), "--results", str(root / "results")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, json.loads((root / "results" / "peers_mobilenet_v2.json").read_text())


@pytest.mark.slow
def test_every_tool_ran_on_the_same_job(smoke):
    _, payload = smoke
    assert set(payload["rows"]) == {"lowbit w8a8-minmax", "onnxruntime w8a8-minmax-reduce-range"}
    assert payload["job"]["calibration_images"] == 8 and payload["job"]["evaluation_images"] == 16
    assert payload["job"]["labelled_images"] == 16  # the first 16 evaluation images are foolbox's photos
    for result in payload["rows"].values():
        assert "error" not in result
        assert result["peak_rss_mb"] > 100 and all(s > 0 for s in result["seconds"].values())


def test_figures_match_the_saved_outputs(smoke):
    root, payload = smoke
    job = root / "work" / "mobilenet_v2"
    fp32 = np.load(job / "fp32_outputs.npy")
    images = np.load(job / "evaluation.npy")
    for key, result in payload["rows"].items():
        outputs = np.load(job / "runs" / key.replace(" ", "-") / "outputs.npy")
        assert result["sim"]["top1_agreement"] == pytest.approx((outputs.argmax(1) == fp32.argmax(1)).mean())
        runtime = session(result["exported"], threads=2)
        executed = runtime.run(None, {runtime.get_inputs()[0].name: images})[0]
        assert result["onnxruntime"]["top1_agreement"] == pytest.approx((executed.argmax(1) == fp32.argmax(1)).mean())
        # KL(p||q) by its definition, with torch-free float64 softmaxes
        p = np.exp(fp32 - fp32.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        q = np.exp(executed - executed.max(1, keepdims=True)); q /= q.sum(1, keepdims=True)
        assert result["onnxruntime"]["mean_kl"] == pytest.approx((p * np.log(p / q)).sum(1).mean(), rel=1e-3)
        assert result["onnxruntime"]["top1_agreement"] >= 0.75


@pytest.mark.slow
def test_report_renders_tables_and_plots(smoke):
    root, _ = smoke
    sys.path.insert(0, str(HARNESS))
    import report
    page = report.write(root / "results", root / "docs")
    text = page.read_text()
    assert "| lowbit 0.1.0 | w8a8-minmax |" in text and "| onnxruntime 1.32.0 | w8a8-minmax-reduce-range |" in text
    assert all((root / "docs" / "img" / f).stat().st_size > 1000 for f in ("peers_accuracy_time.png", "peers_latency.png"))


@pytest.mark.slow
def test_head_to_head_latency_covers_every_export(smoke):
    root, payload = smoke
    reference = "onnxruntime w8a8-minmax-reduce-range"
    proc = subprocess.run([sys.executable, str(HARNESS / "latency.py"), "--models", "mobilenet_v2", "--work",
                           str(root / "work"), "--results", str(root / "results"), "--reference", reference,
                           "--rounds", "3,1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    timed = json.loads((root / "results" / "peer_latency_mobilenet_v2.json").read_text())
    assert set(timed["models"]) == {"fp32"} | set(payload["rows"])
    assert all(ms["batch_1_ms"] > 0 and ms["batch_32_ms"] > ms["batch_1_ms"] for ms in timed["models"].values())
    sys.path.insert(0, str(HARNESS))
    import report
    text = report.write(root / "results", root / "docs").read_text()
    ref, row = timed["models"][reference], timed["models"]["lowbit w8a8-minmax"]
    ratio = f"{ref['batch_1_ms'] / row['batch_1_ms']:.2f}× / {ref['batch_32_ms'] / row['batch_32_ms']:.2f}×"
    assert f"| lowbit w8a8-minmax | {row['batch_1_ms']:.2f} | {row['batch_32_ms']:.1f} | {ratio} |" in text
