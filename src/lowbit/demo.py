"""The `lowbit demo`: quantize a pretrained MobileNetV2 on real photos, check it, and time int8 vs FP32."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

import lowbit
from lowbit.atomic import atomic_write_text
from lowbit.fidelity import measure_fidelity
from lowbit.progress import progress
from lowbit.runtime import run, session
from lowbit.speed import median_ms
from lowbit.zoo import augmented, calibration_photos, labelled_photos, photos_to_batch, pretrained_mobilenet_v2

BATCH = 16
EXTRA_EVAL_CROPS = 44


def run_demo(out_dir, calibration_images: int = 64, quick: bool = False) -> dict:
    """Quantize, export to ``out_dir``, evaluate and time; print a table and write results.json."""
    out_dir = Path(out_dir)
    model = pretrained_mobilenet_v2().eval()
    calibration = augmented([img for img, _ in calibration_photos()], calibration_images, seed=0)
    calib_batches = [photos_to_batch(calibration[i:i + BATCH]) for i in range(0, len(calibration), BATCH)]
    labelled = labelled_photos()
    photos = [img for img, _, _ in labelled]
    labels = torch.tensor([label for _, label, _ in labelled])
    evaluation = photos_to_batch(photos + augmented(photos, EXTRA_EVAL_CROPS, seed=1))
    eval_batches = list(evaluation.split(BATCH))

    sim = lowbit.quantize(model, calib_batches, target="cpu-int8")
    paths = sim.export(out_dir, name="mobilenet_v2")
    top1 = {"fp32": _torch_top1(model, eval_batches), "sim": _torch_top1(sim, eval_batches),
            "onnxruntime": _onnx_top1(paths.qdq_onnx, eval_batches)}
    fidelity = measure_fidelity(sim, paths.qdq_onnx, eval_batches[:2] if quick else eval_batches)
    results = {
        "calibration_images": calibration_images,
        "labelled_images": len(labels),
        "evaluation_images": len(evaluation),
        "calibration_seconds": sim.calibration_seconds,
        "runtime": sim.runtime.name,
        "weight_bits": sorted({q.spec.bits for k, q in sim.quantizers().items() if sim.point(k).role == "weight"}),
        "accuracy": {k: float((v[:len(labels)] == labels).float().mean()) for k, v in top1.items()},
        "agreement_with_fp32": {k: float((top1[k] == top1["fp32"]).float().mean()) for k in ("sim", "onnxruntime")},
        "sim_vs_onnxruntime": {"top1_agreement": fidelity.top1_agreement, "max_error_lsb": fidelity.max_error_lsb},
        "latency_ms": _latencies(paths.onnx, paths.qdq_onnx, evaluation, runs=3 if quick else 20),
        "files": [str(p) for p in paths],
    }
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    click.echo(_table(results, fidelity))
    click.echo("\nfiles:\n" + "\n".join(f"  {p}" for p in results["files"] + [str(out_dir / "results.json")]))
    return results


def _torch_top1(model, batches) -> torch.Tensor:
    """Top-1 class of a torch model (or sim) on every image."""
    with torch.no_grad():
        return torch.cat([model(b).argmax(1) for b in progress(batches, "evaluate (torch)")])


def _onnx_top1(path, batches) -> torch.Tensor:
    """Top-1 class of onnxruntime's execution of ``path`` on every image."""
    runtime = session(path)
    return torch.cat([torch.from_numpy(run(runtime, b)[0].argmax(1))
                      for b in progress(batches, "evaluate (onnxruntime)")])


def _latencies(fp32_path, int8_path, images: torch.Tensor, runs: int) -> dict:
    """Median onnxruntime latency (ms, 2 threads; one warm-up run per five) of both files at batch 1 and 32."""
    result = {}
    for label, path in (("fp32", fp32_path), ("int8", int8_path)):
        runtime = session(path, threads=2)
        for batch in (1, 32):
            result[f"{label}_batch{batch}"] = median_ms(runtime, images[:batch], runs, max(1, runs // 5))
    return result


def _table(results: dict, fidelity) -> str:
    """The demo's results as a markdown table."""
    acc, agree, lat = results["accuracy"], results["agreement_with_fp32"], results["latency_ms"]
    rows = [
        f"| model | top-1 accuracy ({results['labelled_images']} labelled photos) "
        f"| top-1 agreement with FP32 ({results['evaluation_images']} images) |",
        "|---|---|---|",
        f"| FP32 (torch) | {acc['fp32']:.0%} | - |",
        f"| int8 sim (cpu-int8 for {results['runtime']}: weights of "
        f"{'/'.join(map(str, results['weight_bits']))} bits) | {acc['sim']:.0%} | {agree['sim']:.1%} |",
        f"| onnxruntime int8 (QDQ) | {acc['onnxruntime']:.0%} | {agree['onnxruntime']:.1%} |",
        "",
        f"sim vs onnxruntime: {fidelity.row()}",
        f"calibration: {results['calibration_images']} images, {results['calibration_seconds']:.1f} s",
        "",
        "| onnxruntime latency (2 threads, median) | FP32 | int8 | FP32 / int8 |",
        "|---|---|---|---|",
    ]
    for batch in (1, 32):
        fp32, int8 = lat[f"fp32_batch{batch}"], lat[f"int8_batch{batch}"]
        rows.append(f"| batch {batch} | {fp32:.1f} ms | {int8:.1f} ms | {fp32 / int8:.2f}x |")
    return "\n".join(rows)
