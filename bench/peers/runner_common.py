"""What every tool's runner shares: the prepared job (data, weights, FP32 ONNX), the model, step timing,
and the result file. Needs only numpy, torch and lowbit's model zoo, so it imports in every peer's venv.

A runner is called as ``python run_TOOL.py --job DIR --setting NAME --out DIR``; it writes
``OUT/outputs.npy`` (its simulation's logits on the evaluation images, in order), ``OUT/result.json``
and, where the tool exports one, the quantized ONNX model it would ship.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("LOWBIT_QUIET", "1")


def parse_args(settings: tuple[str, ...], description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--job", type=Path, required=True, help="folder written by bench/peers/prepare.py")
    parser.add_argument("--setting", choices=settings, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for outputs.npy, result.json, models")
    return parser.parse_args()


class Job:
    """A prepared job: ``calibration.npy``, ``evaluation.npy`` (NCHW float32, preprocessed), the model's
    state_dict ``weights.pt``, its FP32 export ``fp32.onnx`` and ``job.json`` (model name, batch size)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.info = json.loads((self.folder / "job.json").read_text())
        self.calibration = np.load(self.folder / "calibration.npy")
        self.evaluation = np.load(self.folder / "evaluation.npy")
        self.batch_size = int(self.info["batch_size"])
        self.fp32_onnx = self.folder / "fp32.onnx"

    def model(self):
        """The FP32 torch model, weights loaded, eval mode."""
        import torch
        from lowbit.zoo import EfficientNetLite, MobileNetV2
        model = {"mobilenet_v2": MobileNetV2, "efficientnet_lite0": EfficientNetLite}[self.info["model"]]()
        model.load_state_dict(torch.load(self.folder / "weights.pt", weights_only=True))
        return model.eval()

    def batches(self, which: str) -> list[np.ndarray]:
        """``calibration`` or ``evaluation`` images in batches of ``batch_size``."""
        data = self.calibration if which == "calibration" else self.evaluation
        return [data[i:i + self.batch_size] for i in range(0, len(data), self.batch_size)]

    def torch_batches(self, which: str) -> list:
        import torch
        return [torch.from_numpy(b) for b in self.batches(which)]


class Steps:
    """Wall seconds per named step, in the order they ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def torch_outputs(model, job: Job) -> np.ndarray:
    """Logits of a torch model (or simulation) on the evaluation images."""
    import torch
    with torch.no_grad():
        return np.concatenate([model(b).float().numpy() for b in job.torch_batches("evaluation")])


def ort_session(path: Path, spinning: bool = True):
    """onnxruntime CPU session, 2 intra-op threads, all graph optimisations; ``spinning=False`` lets its
    threads sleep right after a run instead of busy-waiting for the next one (and stealing the cores
    from another session run in between)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits of ``path`` run by onnxruntime on ``images`` in batches."""
    session = ort_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + batch_size]})[0]
                           for i in range(0, len(images), batch_size)])


def onnx_outputs(path: Path, job: Job) -> np.ndarray:
    """Logits of an ONNX model run by onnxruntime on the evaluation images."""
    return run_onnx(path, job.evaluation, job.batch_size)


def write_result(out: Path, *, tool: str, version: str, setting: str, steps: Steps, outputs: np.ndarray,
                 exported: Path | None, notes: str = "") -> None:
    """Write ``outputs.npy`` and ``result.json`` (with this process's peak RSS) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "outputs.npy", outputs.astype(np.float32))
    result = {"tool": tool, "version": version, "setting": setting, "seconds": steps.seconds,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "exported": None if exported is None else str(Path(exported).resolve()), "notes": notes}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
