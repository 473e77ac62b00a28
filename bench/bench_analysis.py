"""Analysis, mixed precision and AutoQuant on the real MobileNetV2 (issue: analysis in ≤ 5 minutes on a
2-core CPU with 128 images; mixed precision at about 6 weight bits vs uniform W4A8, on both front ends;
AutoQuant at W4A8).

Data: 128 augmented crops of scikit-image's photos calibrate and score (agreement with FP32 on the same
images, the figure the tools optimise), and 512 held-out images (the 20 labelled photos and crops of
them) give the agreement a user would see.

    .venv/bin/python bench/bench_analysis.py                       # every row
    .venv/bin/python bench/bench_analysis.py --rows analyze
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.onnx import OnnxQuantSim  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402

ROWS = ("analyze", "analyze-onnx", "w4a8-uniform", "mixed-precision", "mixed-precision-onnx", "autoquant-w4a8")


def agreement(model, net, batches) -> float:
    """Top-1 agreement of ``net`` (a torch sim, or an ONNX sim returning arrays) with ``model``."""
    logits = (lambda x: torch.from_numpy(net(x)[0])) if isinstance(net, OnnxQuantSim) else net
    with torch.no_grad():
        same = sum(int((model(x).argmax(1) == logits(x).argmax(1)).sum()) for x in batches)
    return same / sum(len(x) for x in batches)


def onnx_export(model, folder: Path) -> Path:
    """``model`` as an ONNX file with a dynamic batch, for the ONNX front end's rows."""
    path = folder / "mobilenet_v2.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--allowed-drop", type=float, default=0.02)
    args = parser.parse_args()
    _common.setup_threads()
    model = pretrained_mobilenet_v2().eval()
    data = _common.calibration_batches(args.images, batch=32)
    held_out, _ = _common.evaluation_batches(492)
    results, rows = {}, []
    out = Path(tempfile.mkdtemp(prefix="bench_analysis_"))
    for name in args.rows.split(","):
        start = time.perf_counter()
        if name == "analyze":
            sim = lowbit.quantize(model, data, target="w4a8")
            result = lowbit.analyze(sim, data, metric="agreement", out_dir=out / "analyze")
            figures = {"layers": len(result.layers), "most_sensitive": [l.name for l in result.layers[:5]],
                       "score": result.quantized_score}
        elif name == "analyze-onnx":
            start_quantize = time.perf_counter()
            sim = lowbit.quantize(str(onnx_export(model, out)), data, target="w4a8")
            result = lowbit.analyze(sim, data, metric="agreement", out_dir=out / "analyze-onnx")
            figures = {"layers": len(result.layers), "most_sensitive": [l.name for l in result.layers[:5]],
                       "score": result.quantized_score, "analyze_seconds": result.seconds,
                       "export_and_quantize_seconds": time.perf_counter() - start_quantize - result.seconds}
        elif name == "w4a8-uniform":
            sim = lowbit.quantize(model, data, target="w4a8")
            figures = {"mean_weight_bits": 4.0}
        elif name in ("mixed-precision", "mixed-precision-onnx"):
            source = str(onnx_export(model, out)) if name.endswith("onnx") else model
            sim = lowbit.quantize(source, data, target="default")
            result = lowbit.mixed_precision(sim, data, candidates=[(8, 8), (4, 8)], weight_bits_budget=6.0,
                                            allowed_drop=args.allowed_drop, out_dir=out / "mixed")
            chosen = result.chosen
            figures = {"mean_weight_bits": chosen.mean_weight_bits if chosen else None,
                       "score": chosen.score if chosen else None, "points": len(result.evaluated)}
        else:
            result = lowbit.autoquant(model, data, allowed_drop=args.allowed_drop, target="w4a8",
                                      out_dir=out / "autoquant")
            sim = result.sim
            figures = {"met": result.met, "score": result.score,
                       "stages": [(s.name, s.score, round(s.seconds, 1)) for s in result.stages]}
        seconds = time.perf_counter() - start
        held = agreement(model, sim, held_out)
        results[name] = {"seconds": seconds, "held_out_agreement": held, **figures}
        rows.append([name, f"{seconds:.0f}", f"{held:.1%}", ", ".join(f"{k} {v}" for k, v in figures.items()
                                                                    if k not in ("stages", "most_sensitive"))])
        print(f"{name}: {results[name]}", flush=True)
    _common.print_table(["row", "seconds", "held-out top-1 agreement", "figures"], rows)
    print(f"wrote {_common.write_results('bench_analysis', {'images': args.images, 'rows': _merged(results)})}")


def _merged(results: dict) -> dict:
    """Rows of the last run on this kind of CPU that this run did not redo, plus this run's rows."""
    path = Path(__file__).resolve().parent / "results" / "bench_analysis.json"
    if not path.exists():
        return results
    previous = json.loads(path.read_text())
    if previous.get("machine", {}).get("cpu_flags") != _common.cpu_flags():
        return results
    return {**previous.get("rows", {}), **results}


if __name__ == "__main__":
    main()
