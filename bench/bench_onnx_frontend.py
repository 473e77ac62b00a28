"""The ONNX front end against the PyTorch front end on the real MobileNetV2, same photos, one run.

The ONNX model is MobileNetV2 exported with every BatchNormalization kept (as Paddle and some TF
converters write it: the ONNX front end folds them). Per front end and setting: top-1 agreement with
FP32 and mean KL of the exported QDQ model run in onnxruntime (256 calibration / 512 evaluation
images, as bench_ptq), wall time, and for the ONNX front end calibration throughput over FP32
onnxruntime inference throughput on the same batches (goal ≥ 0.7). AdaRound rows name the granularity
both front ends use (``-layer``; ``-block``, the default).

    .venv/bin/python bench/bench_onnx_frontend.py                          # every setting
    .venv/bin/python bench/bench_onnx_frontend.py --rows w8a8-minmax,w8a8-equalize-bias-correction
    .venv/bin/python bench/bench_onnx_frontend.py --rows w8a8-cpu-int8-minmax --noise-seeds 4
    .venv/bin/python bench/bench_onnx_frontend.py --rows w8a8-minmax --evaluation-images 4096

``--noise-seeds N`` adds, per setting, the torch front end's agreement range over N calibrations on
images perturbed by relative noise of 1e-6 (float rounding's size): the resolution of a front-end gap.
``--evaluation-images N`` scores on N images instead of 512 (rows keyed with the count): the standard
error of a gap between two nearly equal models shrinks as 1/sqrt(N).
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.runtime import session  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402

SETTINGS = {
    "w8a8-minmax": (8, "minmax", (), "default"),
    "w8a8-mean-minmax": (8, "mean_minmax", (), "default"),
    "w8a8-cpu-int8-minmax": (7, "minmax", (), "cpu-int8"),
    "w8a8-cpu-int8-mean-minmax": (7, "mean_minmax", (), "cpu-int8"),
    "w8a8-equalize-bias-correction": (8, "minmax", ("equalize", "bias_correction"), "default"),
    "w4a8-sequential-mse-adaround-layer": (4, "minmax", ("sequential_mse", "adaround"), "default"),
    "w4a8-sequential-mse-adaround-block": (4, "minmax", ("sequential_mse", "adaround"), "default"),
}
"""Setting → (weight bits, activation scheme, techniques, target preset); cpu-int8's 7-bit weights
cannot saturate onnxruntime's int16 pair sums on CPUs without VNNI."""
ONNX_MODEL = "torch.onnx.export, BatchNormalization kept"
EVALUATION_IMAGES = 512
N_LABELLED = 20
NOISE = 1e-6


def onnx_outputs(path, batches) -> torch.Tensor:
    runtime = session(path, threads=_common.THREADS)
    name = runtime.get_inputs()[0].name
    return torch.cat([torch.from_numpy(runtime.run(None, {name: b.numpy()})[0]) for b in batches])


def figures(outputs: torch.Tensor, fp32: torch.Tensor) -> dict:
    log_p, log_q = fp32.log_softmax(1), outputs.log_softmax(1)
    return {"top1_agreement": float((outputs.argmax(1) == fp32.argmax(1)).float().mean()),
            "mean_kl": float((log_p.exp() * (log_p - log_q)).sum(1).mean())}


def quantize(source, calib, bits: int, scheme: str, techniques: tuple[str, ...], target: str, granularity: str):
    """``lowbit.quantize`` with AdaRound at ``granularity`` on either front end."""
    if "adaround" not in techniques:
        return lowbit.quantize(source, calib, target=target, param_bits=bits, scheme=scheme, techniques=techniques)
    sim = lowbit.quantize(source, calib, target=target, param_bits=bits, scheme=scheme,
                          techniques=[t for t in techniques if t != "adaround"])
    result = lowbit.adaround(sim, calib, granularity=granularity)
    sim.calibrate(calib)
    sim.technique_results += (str(result),)
    return sim


def _granularity(name: str) -> str:
    return "layer" if name.endswith("-layer") else "block"


def noise_range(model, calib, evals, fp32, name: str, seeds: int, out: Path) -> dict:
    """Agreement and KL ranges of the torch front end calibrated on ``calib`` times (1 + NOISE · N(0, 1)),
    one seed per run."""
    runs = []
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        noisy = [b * (1 + NOISE * torch.randn(b.shape, generator=generator)) for b in calib]
        paths = quantize(model, noisy, *SETTINGS[name], _granularity(name)).export(out / str(seed), "mobilenet_v2")
        runs.append(figures(onnx_outputs(paths.qdq_onnx, evals), fp32))
    agreements, kls = [r["top1_agreement"] for r in runs], [r["mean_kl"] for r in runs]
    return {"relative_noise": NOISE, "seeds": seeds, "top1_agreement_range": [min(agreements), max(agreements)],
            "mean_kl_range": [min(kls), max(kls)]}


def table_row(key: str, r: dict) -> list[str]:
    front_end, setting = key.split("-", 1)
    setting = setting.replace("@", " @ ") + (" images" if "@" in setting else "")
    if "top1_agreement_range" in r:
        low, high = r["top1_agreement_range"]
        return [f"pytorch, {r['seeds']} calibrations on images × (1 + {r['relative_noise']:g}·N(0,1))",
                setting.removeprefix("noise-"), f"{low:.1%} – {high:.1%}",
                "{:.4f} – {:.4f}".format(*r["mean_kl_range"]), "", ""]
    return [front_end, setting, f"{r['top1_agreement']:.1%}", f"{r['mean_kl']:.4f}", f"{r['quantize_seconds']:.0f}",
            f"{r['calibration_over_fp32_throughput']:.2f}" if "calibration_over_fp32_throughput" in r else ""]


def bn_kept_export(model, path: Path) -> Path:
    """``model`` in ONNX with its BatchNormalization nodes kept (no exporter folding)."""
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, do_constant_folding=False,
                      training=torch.onnx.TrainingMode.PRESERVE, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(SETTINGS), help="comma-separated settings")
    parser.add_argument("--noise-seeds", type=int, default=0,
                        help="torch front-end calibrations on perturbed images per setting (see above)")
    parser.add_argument("--evaluation-images", type=int, default=EVALUATION_IMAGES,
                        help=f"images scored per row (default {EVALUATION_IMAGES}; others are keyed NAME@N)")
    args = parser.parse_args()
    names = args.rows.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting {unknown[0]}; choose from {', '.join(SETTINGS)}")
    _common.setup_threads()
    model = pretrained_mobilenet_v2().eval()
    calib = _common.calibration_batches(n_images=256)
    evals, _ = _common.evaluation_batches(n_augmented=args.evaluation_images - N_LABELLED)
    suffix = "" if args.evaluation_images == EVALUATION_IMAGES else f"@{args.evaluation_images}"
    with torch.no_grad():
        fp32 = torch.cat([model(b) for b in evals])
    path = _common.RESULTS / "bench_onnx_frontend.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    results = previous.get("rows", {}) if previous.get("onnx_model") == ONNX_MODEL else {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = bn_kept_export(model, Path(tmp) / "mobilenet_v2_bn.onnx")
        fp32_seconds = min(_common.median_time(lambda: onnx_outputs(onnx_path, calib), repeats=1)[1])
        for name in names:
            bits, scheme, techniques, target = SETTINGS[name]
            for front_end, source in (("pytorch", model), ("onnx", str(onnx_path))):
                start = time.perf_counter()
                sim = quantize(source, calib, bits, scheme, techniques, target,
                               _granularity(name))
                seconds = time.perf_counter() - start
                paths = sim.export(Path(tmp) / f"{front_end}-{name}", "mobilenet_v2")
                result = {**figures(onnx_outputs(paths.qdq_onnx, evals), fp32), "quantize_seconds": seconds,
                          "calibration_seconds": sim.calibration_seconds, "results": list(sim.technique_results),
                          "evaluation_images": args.evaluation_images}
                if front_end == "onnx":
                    result["calibration_over_fp32_throughput"] = fp32_seconds / sim.calibration_seconds
                results[f"{front_end}-{name}{suffix}"] = result
                print(f"{front_end}-{name}{suffix}: {result['top1_agreement']:.1%} | "
                      f"{' | '.join(sim.technique_results)}", flush=True)
            if args.noise_seeds:
                results[f"pytorch-noise-{name}{suffix}"] = noise_range(
                    model, calib, evals, fp32, name, args.noise_seeds, Path(tmp) / f"noise-{name}")
    rows = [table_row(key, r) for key, r in results.items()]
    _common.print_table(["front end", "setting", "top-1 agreement (QDQ in onnxruntime)", "mean KL",
                         "quantize s", "calibration / FP32 throughput (goal ≥ 0.7)"], rows)
    path = _common.write_results("bench_onnx_frontend", {
        "model": "mobilenet_v2 (pretrained)", "onnx_model": ONNX_MODEL, "calibration_images": 256,
        "evaluation_images": EVALUATION_IMAGES, "fp32_onnxruntime_seconds_over_calibration_batches": fp32_seconds,
        "rows": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
