"""TorchScript export: the file ``sim.export_torchscript`` writes against the sim and onnxruntime's QDQ file.

For MobileNetV2 and EfficientNet-Lite0 (pretrained, target ``default``, min-max on 64 crops): top-1 agreement and
max output error (in output LSBs) of the TorchScript file vs the sim on bench_ptq's 512 held-out images, and the
median latency at batch 1 and 32 of the sim, the TorchScript file and the QDQ file in onnxruntime (2 threads,
the three timed alternately).

    .venv/bin/python bench/bench_torchscript.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.fidelity import output_lsb  # noqa: E402
from lowbit.runtime import feeds  # noqa: E402
from lowbit.zoo import pretrained_efficientnet_lite0, pretrained_mobilenet_v2  # noqa: E402

MODELS = {"mobilenet_v2": pretrained_mobilenet_v2, "efficientnet_lite0": pretrained_efficientnet_lite0}
REPEATS = {1: 30, 32: 5}
WARMUP = {1: 3, 32: 1}
EVALUATION_IMAGES = 512


def model_row(name: str, calib, evals, tmp: Path) -> dict:
    sim = lowbit.quantize(MODELS[name]().eval(), calib, target="default")
    scripted = torch.jit.load(str(sim.export_torchscript(tmp / f"{name}.pt")))
    qdq = _common.timed_session(sim.export(tmp, name).qdq_onnx)
    with torch.no_grad():
        simulated = torch.cat([sim(b) for b in evals])
        traced = torch.cat([scripted(b) for b in evals])
    row = {"top1_agreement": float((simulated.argmax(1) == traced.argmax(1)).float().mean()),
           "max_error_lsb": float((simulated - traced).abs().max() / output_lsb(sim)), "latency_ms": {}}
    for batch in REPEATS:
        x = evals[0][:batch]
        feed = feeds(qdq, x)
        with torch.no_grad():
            times = _common.alternated_times({"sim": lambda: sim(x), "torchscript": lambda: scripted(x),
                                              "onnxruntime": lambda: qdq.run(None, feed)}, REPEATS[batch],
                                             WARMUP[batch])
        row["latency_ms"][f"batch_{batch}"] = {kind: statistics.median(t) * 1e3 for kind, t in times.items()}
    return row


def main() -> None:
    _common.setup_threads()
    start = time.perf_counter()
    calib = _common.calibration_batches(n_images=64)
    evals, _ = _common.evaluation_batches(n_augmented=EVALUATION_IMAGES - 20)
    results, table = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in MODELS:
            row = results[name] = model_row(name, calib, evals, Path(tmp))
            for batch in REPEATS:
                ms = row["latency_ms"][f"batch_{batch}"]
                table.append([name, f"{row['top1_agreement']:.1%}", f"{row['max_error_lsb']:.1f}", batch,
                              f"{ms['sim']:.1f}", f"{ms['torchscript']:.1f}", f"{ms['onnxruntime']:.1f}"])
    _common.print_table(["model (W8A8)", "TorchScript↔sim top-1", "max error (LSB)", "batch", "sim ms",
                         "TorchScript ms", "onnxruntime QDQ ms"], table)
    path = _common.write_results("bench_torchscript", {
        "target": "default", "calibration_images": 64, "evaluation_images": EVALUATION_IMAGES,
        "statistic": "median", "models": results, "wall_seconds": time.perf_counter() - start})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
