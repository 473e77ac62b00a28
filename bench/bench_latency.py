"""onnxruntime latency: exported FP32 ``.onnx`` vs integer ``.qdq.onnx``, batch 1 and 32.

For targets ``cpu-int8`` and ``default``: quantize the pretrained MobileNetV2 (minmax, 64 augmented
scikit-image photos), export, and time ``InferenceSession.run`` (CPU provider, 2 intra-op threads, all
graph optimisations) on real photos. Each configuration: warm-up runs, then the median of repeated runs;
the FP32 and QDQ sessions are timed alternately so machine noise hits both alike.
Goal: QDQ faster than FP32 at both batch sizes (fp32/int8 > 1).

    .venv/bin/python bench/bench_latency.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import lowbit  # noqa: E402
from lowbit.runtime import feeds  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402

TARGETS = ("cpu-int8", "default")
REPEATS = {1: 40, 32: 5}
WARMUP = {1: 5, 32: 1}


def main() -> None:
    _common.setup_threads()
    start = time.perf_counter()
    model = pretrained_mobilenet_v2().eval()
    calib = _common.calibration_batches(n_images=64)
    evals, _ = _common.evaluation_batches(n_augmented=12)  # 32 images
    inputs = {1: evals[0][:1], 32: evals[0][:32]}
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for target in TARGETS:
            sim = lowbit.quantize(model, calib, target=target, scheme="minmax")
            fp32_path, _, qdq_path = sim.export(Path(tmp) / target, name="mobilenet_v2")
            fp32 = _common.timed_session(fp32_path)
            qdq = _common.timed_session(qdq_path)
            results[target] = {}
            for batch, x in inputs.items():
                feed_f, feed_q = feeds(fp32, x), feeds(qdq, x)
                times = _common.alternated_times({"fp32": lambda: fp32.run(None, feed_f),
                                                  "qdq": lambda: qdq.run(None, feed_q)},
                                                 REPEATS[batch], WARMUP[batch])
                tf, tq = times["fp32"], times["qdq"]
                mf, mq = statistics.median(tf), statistics.median(tq)
                results[target][f"batch_{batch}"] = {
                    "fp32_ms": mf * 1e3, "qdq_ms": mq * 1e3, "fp32_over_qdq": mf / mq,
                    "repeats": REPEATS[batch], "fp32_all_ms": [t * 1e3 for t in tf],
                    "qdq_all_ms": [t * 1e3 for t in tq]}
                rows.append([target, batch, f"{mf * 1e3:.1f}", f"{mq * 1e3:.1f}", f"{mf / mq:.2f}×",
                             "yes" if mq < mf else "**no**"])
    _common.print_table(["target", "batch", "FP32 .onnx (ms)", "QDQ .qdq.onnx (ms)", "fp32/int8",
                         "goal (QDQ faster)"], rows)
    path = _common.write_results("bench_latency", {
        "model": "mobilenet_v2 (pretrained, 224x224)", "calibration_images": 64, "scheme": "minmax",
        "statistic": "median", "targets": results, "wall_seconds": time.perf_counter() - start})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
