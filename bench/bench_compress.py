"""Compression of the real MobileNetV2 and EfficientNet-Lite0: ``lowbit.compress`` to a MAC fraction, top-1
agreement with FP32 before and after fine-tuning, parameters, and onnxruntime's measured latency of the FP32 and
int8 exports against the uncompressed model's (the sessions alternated in one run), plus compress-then-quantize.

Scoring and fine-tuning data: fresh crops of the scikit-image photos (bench_qat's data, distillation, no labels;
scoring on the first two batches); evaluation: bench_ptq's 512 images.
Rows of earlier runs stay in the JSON (each records its machine) unless this run redoes them.

    .venv/bin/python bench/bench_compress.py --rows mobilenet_v2-0.75 --steps 200
    .venv/bin/python bench/bench_compress.py --rows mobilenet_v2-0.5 --steps 50 --methods channel_pruning
    .venv/bin/python bench/bench_compress.py --rows mobilenet_v2-0.75 --steps 50 --keep-best

With ``--keep-best`` every eighth evaluation image (64 in all) chooses the fine-tuned state kept (compress's
keep_best), and the agreement before and after fine-tuning is scored on the other 448, which the choice did not see.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from bench_qat import EVALUATION_IMAGES, MODELS, N_LABELLED, TrainingCrops, figures, split_trace  # noqa: E402

import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.compression.files import write_model_files  # noqa: E402


def latencies(paths: dict[str, Path], batch: int, repeats: int = 20) -> dict[str, float]:
    """Median milliseconds of each ONNX file on one batch of ``batch`` images, the sessions alternated."""
    x = torch.randn(batch, 3, 224, 224).numpy()
    sessions = {name: _common.timed_session(path) for name, path in paths.items()}
    calls = {name: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for name, s in sessions.items()}
    times = _common.alternated_times(calls, repeats, warmup=2)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def exports(model, calib, folder: Path, name: str) -> dict[str, Path]:
    """The model's FP32 ONNX file and its int8 QDQ file (min-max, default target), under ``folder``."""
    _, fp32 = write_model_files(model, calib[0][:2], folder, name)
    sim = lowbit.quantize(model, calib)
    return {f"{name}-fp32": fp32, f"{name}-int8": sim.export(folder, name=f"{name}-sim").qdq_onnx}


def run_row(model_name: str, fraction: float, args, evals, fp32: torch.Tensor) -> dict:
    model = MODELS[model_name]().eval()
    calib = _common.calibration_batches(n_images=256)
    crops = TrainingCrops(args.batches_per_epoch, args.batch)
    scoring = {"eval_data": evals}
    if args.keep_best:
        trace, untraced, traced = split_trace(evals)
        reference = fp32[~traced]

        def untraced_agreement(candidate) -> float:
            with torch.no_grad():
                return figures(torch.cat([candidate(b) for b in untraced]), reference)["top1_agreement"]

        scoring = {"eval_data": trace, "eval_fn": untraced_agreement, "keep_best": True}
    with tempfile.TemporaryDirectory() as tmp:
        result = lowbit.compress(model, crops, macs=fraction, methods=args.methods, fine_tune_steps=args.steps,
                                 lr=args.lr, num_batches=2, out_dir=Path(tmp), **scoring)
        compressed = result.model.eval()
        with torch.no_grad():
            after = figures(torch.cat([compressed(b) for b in evals]), fp32)
        files = {**exports(model, calib, Path(tmp), "original"), **exports(compressed, calib, Path(tmp), "compressed")}
        quantized = lowbit.quantize(compressed, calib)
        with torch.no_grad():
            int8 = figures(torch.cat([quantized(b) for b in evals]), fp32)
        timing = {batch: latencies(files, batch) for batch in (1, 32)}
    return {"model": model_name, "macs_fraction": fraction, "methods": list(args.methods), "steps": args.steps,
            "batch": args.batch, "lr": args.lr,
            "macs": result.macs, "params": result.params, "ratios": result.ratios,
            "before": {"top1_agreement": result.score[0]}, "after": after, "compressed_int8": int8,
            "scored_on": "the 448 untraced images" if args.keep_best else "all 512 images",
            "after_scored": result.score[1], "kept_step": result.kept_step,
            "seconds": result.seconds, "latency_ms": timing, "machine": _common.machine_info()}


def markdown_row(key: str, r: dict) -> list:
    (m0, m1), (p0, p1) = r["macs"], r["params"]
    t1, t32 = r["latency_ms"][1], r["latency_ms"][32]
    ratio = lambda t, kind: t[f"compressed-{kind}"] / t[f"original-{kind}"]  # noqa: E731
    return [key, f"{m1 / m0:.0%}", f"{p1 / p0:.0%}", f"{r['before']['top1_agreement']:.1%}",
            f"{r.get('after_scored', r['after']['top1_agreement']):.1%}",
            f"{r['compressed_int8']['top1_agreement']:.1%}",
            f"{ratio(t1, 'fp32'):.2f} / {ratio(t32, 'fp32'):.2f}",
            f"{ratio(t1, 'int8'):.2f} / {ratio(t32, 'int8'):.2f}",
            f"{r['seconds']:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(f"{m}-{f}" for m in MODELS for f in (0.75, 0.5)),
                        help="comma-separated MODEL-FRACTION rows")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches-per-epoch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--methods", default="spatial_svd,channel_pruning",
                        help="comma-separated methods compress may use (one alone: what it turns into latency)")
    parser.add_argument("--keep-best", action="store_true",
                        help="keep the fine-tuned state that scores best on every eighth image; score on the rest")
    args = parser.parse_args()
    args.methods = tuple(args.methods.split(","))
    rows = [(m, float(f)) for m, f in (row.rsplit("-", 1) for row in args.rows.split(","))]
    _common.setup_threads()
    evals, _ = _common.evaluation_batches(n_augmented=EVALUATION_IMAGES - N_LABELLED)
    path = _common.RESULTS / "bench_compress.json"
    results, kept = {}, _common.previous_rows("bench_compress")
    for model_name, fraction in rows:
        with torch.no_grad():
            model = MODELS[model_name]().eval()
            fp32 = torch.cat([model(b) for b in evals])
        alone = "" if args.methods == ("spatial_svd", "channel_pruning") else f", {' + '.join(args.methods)} only"
        best = ", keep best, scored on 448 images" if args.keep_best else ""
        key = f"{model_name} at {fraction:.0%} MACs ({args.steps} steps × {args.batch}, lr {args.lr:g}{alone}{best})"
        results[key] = run_row(model_name, fraction, args, evals, fp32)
        row = results[key]
        print(f"{key}: {row['before']['top1_agreement']:.1%} → {row['after_scored']:.1%} (kept step "
              f"{row['kept_step']})", flush=True)
        _common.write_results("bench_compress", {"evaluation_images": EVALUATION_IMAGES, "rows": {**kept, **results}})
    print()
    _common.print_table(["model (recipe)", "MACs", "params", "agreement before fine-tuning", "after",
                         "compressed int8", "FP32 latency vs original (batch 1 / 32)", "int8 latency vs original",
                         "compress s (with fine-tuning)"], [markdown_row(k, r) for k, r in results.items()])
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
