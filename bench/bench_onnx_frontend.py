"""The ONNX front end against the PyTorch front end on the real MobileNetV2, same photos, one run.

The ONNX model is the torch front end's FP32 export (BatchNorm folded by the exporter). Per front end
and scheme: top-1 agreement with FP32 and mean KL of the exported QDQ model run in onnxruntime
(256 calibration / 512 evaluation images, as bench_ptq), calibration wall time, and for the ONNX
front end calibration throughput over FP32 onnxruntime inference throughput on the same batches
(goal ≥ 0.7).

    .venv/bin/python bench/bench_onnx_frontend.py
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
from lowbit.runtime import session  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402

SCHEMES = ("minmax", "mean_minmax")
EVALUATION_IMAGES = 512
N_LABELLED = 20


def onnx_outputs(path, batches) -> torch.Tensor:
    runtime = session(path, threads=_common.THREADS)
    name = runtime.get_inputs()[0].name
    return torch.cat([torch.from_numpy(runtime.run(None, {name: b.numpy()})[0]) for b in batches])


def figures(outputs: torch.Tensor, fp32: torch.Tensor) -> dict:
    log_p, log_q = fp32.log_softmax(1), outputs.log_softmax(1)
    return {"top1_agreement": float((outputs.argmax(1) == fp32.argmax(1)).float().mean()),
            "mean_kl": float((log_p.exp() * (log_p - log_q)).sum(1).mean())}


def main() -> None:
    _common.setup_threads()
    model = pretrained_mobilenet_v2().eval()
    calib = _common.calibration_batches(n_images=256)
    evals, _ = _common.evaluation_batches(n_augmented=EVALUATION_IMAGES - N_LABELLED)
    with torch.no_grad():
        fp32 = torch.cat([model(b) for b in evals])
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32_onnx = lowbit.quantize(model, calib[:1]).export(Path(tmp) / "fp32", "mobilenet_v2").onnx
        fp32_seconds = min(_common.median_time(lambda: onnx_outputs(fp32_onnx, calib), repeats=1)[1])
        for scheme in SCHEMES:
            for front_end, source in (("pytorch", model), ("onnx", fp32_onnx)):
                start = time.perf_counter()
                sim = lowbit.quantize(source, calib, scheme=scheme)
                seconds = time.perf_counter() - start
                paths = sim.export(Path(tmp) / f"{front_end}-{scheme}", "mobilenet_v2")
                result = {**figures(onnx_outputs(paths.qdq_onnx, evals), fp32), "quantize_seconds": seconds,
                          "calibration_seconds": sim.calibration_seconds}
                if front_end == "onnx":
                    result["calibration_over_fp32_throughput"] = fp32_seconds / sim.calibration_seconds
                results[f"{front_end}-{scheme}"] = result
                ratio = f"{result['calibration_over_fp32_throughput']:.2f}" if front_end == "onnx" else ""
                rows.append([front_end, scheme, f"{result['top1_agreement']:.1%}", f"{result['mean_kl']:.4f}",
                             f"{sim.calibration_seconds:.1f}", ratio])
    _common.print_table(["front end", "scheme", "top-1 agreement (QDQ in onnxruntime)", "mean KL",
                         "calibration s", "calibration / FP32 throughput (goal ≥ 0.7)"], rows)
    path = _common.write_results("bench_onnx_frontend", {
        "model": "mobilenet_v2 (pretrained)", "calibration_images": 256, "evaluation_images": EVALUATION_IMAGES,
        "fp32_onnxruntime_seconds_over_calibration_batches": fp32_seconds, "rows": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
