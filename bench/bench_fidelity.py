"""Fidelity of the QDQ export: simulation vs onnxruntime, and both vs FP32 and the labels.

For targets ``cpu-int8`` (7-bit weights), ``default`` (8-bit weights) and ``default`` with 4-bit activations
(stored as uint8 and clamped to their 16 steps in the file): calibrate on 128 augmented
scikit-image photos (minmax), export, then on the evaluation set (the 20 labelled ImageNet photos plus
108 augmented crops of them = 128 images) report
- sim vs onnxruntime: top-1 agreement and max output error in output LSBs (lowbit.fidelity.measure_fidelity);
- top-1 agreement of the sim and of onnxruntime with the FP32 model;
- top-1 accuracy on the 20 labelled photos (FP32, sim, onnxruntime).

    .venv/bin/python bench/bench_fidelity.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.fidelity import measure_fidelity, output_lsb  # noqa: E402
from lowbit.runtime import run, session  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402

ROWS = {"cpu-int8": ("cpu-int8", None), "default": ("default", None), "default-a4": ("default", 4)}
"""Row label → (target preset, activation bits override)."""
N_LABELLED = 20


def main() -> None:
    _common.setup_threads()
    start = time.perf_counter()
    model = pretrained_mobilenet_v2().eval()
    calib = _common.calibration_batches(n_images=128)
    evals, labels = _common.evaluation_batches(n_augmented=108)
    with torch.no_grad():
        fp32 = torch.cat([model(b) for b in evals]).argmax(1)
    fp32_acc = float((fp32[:N_LABELLED] == labels[:N_LABELLED]).float().mean())
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (target, act_bits) in ROWS.items():
            sim = lowbit.quantize(model, calib, target=target, act_bits=act_bits, scheme="minmax")
            _, _, qdq_path = sim.export(Path(tmp) / label, name="mobilenet_v2")
            fid = measure_fidelity(sim, qdq_path, evals, threads=_common.THREADS)
            ort = session(qdq_path, threads=_common.THREADS)
            with torch.no_grad():
                sim_top = torch.cat([sim(b) for b in evals]).argmax(1)
            ort_top = torch.from_numpy(np.concatenate([run(ort, b)[0] for b in evals])).argmax(1)
            res = {
                "samples": fid.samples,
                "sim_vs_ort_top1_agreement": fid.top1_agreement,
                "max_abs_error": fid.max_abs_error,
                "max_error_lsb": fid.max_error_lsb,
                "output_lsb": output_lsb(sim),
                "sim_vs_fp32_top1_agreement": float((sim_top == fp32).float().mean()),
                "ort_vs_fp32_top1_agreement": float((ort_top == fp32).float().mean()),
                "labelled_top1_fp32": fp32_acc,
                "labelled_top1_sim": float((sim_top[:N_LABELLED] == labels[:N_LABELLED]).float().mean()),
                "labelled_top1_ort": float((ort_top[:N_LABELLED] == labels[:N_LABELLED]).float().mean()),
            }
            results[label] = res
            rows.append([label, res["samples"], f"{res['sim_vs_ort_top1_agreement']:.2%}",
                         f"{res['max_error_lsb']:.1f}", f"{res['sim_vs_fp32_top1_agreement']:.2%}",
                         f"{res['ort_vs_fp32_top1_agreement']:.2%}",
                         f"{res['labelled_top1_fp32']:.0%} / {res['labelled_top1_sim']:.0%} / "
                         f"{res['labelled_top1_ort']:.0%}"])
    _common.print_table(["target", "eval images", "sim vs ORT top-1", "max err (LSB)", "sim vs FP32 top-1",
                         "ORT vs FP32 top-1", "labelled top-1 FP32 / sim / ORT (20)"], rows)
    path = _common.write_results("bench_fidelity", {
        "model": "mobilenet_v2 (pretrained, 224x224)", "calibration_images": 128, "scheme": "minmax",
        "evaluation_images": int(labels.numel()), "labelled_images": N_LABELLED, "targets": results,
        "wall_seconds": time.perf_counter() - start})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
