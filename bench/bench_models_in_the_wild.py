"""Models as users write and ship them: fidelity of every output and whether int8 is faster.

Rows: the twelve models of the fidelity zoo (tests/fidelity, PyTorch front end, random seeded weights)
and the pretrained ONNX files two packages ship (Silero VAD, RapidOCR). For each: quantize at the
`default` target (min-max) on two seeded batches, export, then
- sim vs onnxruntime on every output: worst top-1/argmax agreement and worst error in output LSB, on
  this machine's integer kernels;
- onnxruntime latency of one sample, FP32 file vs QDQ file (lowbit.speed: median of 50 runs, default
  threads), and the op types onnxruntime still runs in float between Q/DQ pairs.

    .venv/bin/python bench/bench_models_in_the_wild.py
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fidelity"))
import _common  # noqa: E402

import numpy as np  # noqa: E402

import lowbit  # noqa: E402
from fidelity_zoo_models import ZOO, build  # noqa: E402
from lowbit.speed import measure_speed  # noqa: E402


def _zoo_cases():
    for name in sorted(ZOO):
        model, inputs = build(name)
        batches = (list(zip(*(part.split(16) for part in inputs))) if isinstance(inputs, tuple)
                   else list(inputs.split(16)))
        yield f"zoo: {name}", model, batches


def _package_folder(package: str) -> Path:
    return Path(importlib.util.find_spec(package).submodule_search_locations[0])


def _onnx_cases():
    rng = np.random.default_rng(0)
    silero = _package_folder("silero_vad") / "data"
    for name in ("silero_vad_16k_op15.onnx", "silero_vad_half.onnx", "silero_vad_openvino_16k.onnx"):
        rows, samples = (1, 576) if "openvino" in name else (4, 512)
        batches = [{"input": (rng.standard_normal((rows, samples)) * 0.1).astype(np.float32),
                    "state": np.zeros((2, rows, 128), np.float32)} for _ in range(2)]
        if "op15" in name:
            for batch in batches:
                batch["sr"] = np.array(16000, np.int64)
        yield f"Silero VAD {name}", silero / name, batches
    ocr = _package_folder("rapidocr_onnxruntime") / "models"
    for name, shape in (("ch_ppocr_mobile_v2.0_cls_infer.onnx", (8, 3, 48, 192)),
                        ("ch_PP-OCRv4_rec_infer.onnx", (4, 3, 48, 320)),
                        ("ch_PP-OCRv4_det_infer.onnx", (2, 3, 320, 320))):
        yield f"RapidOCR {name}", ocr / name, [rng.uniform(-1, 1, shape).astype(np.float32) for _ in range(2)]


def _row(label, model, batches, folder: Path) -> dict:
    start = time.perf_counter()
    sim = lowbit.quantize(model, batches)
    paths = sim.export(folder, name="model", verify=batches)
    seconds = time.perf_counter() - start
    speed = measure_speed(paths.onnx, paths.qdq_onnx, batches[0], runs=50)
    outputs = paths.fidelity.outputs
    agreements = [o.top1_agreement for o in outputs if o.top1_agreement is not None]
    errors = [o.max_error_lsb for o in outputs if o.max_error_lsb == o.max_error_lsb]
    return {"model": label, "outputs": len(outputs), "quantize_export_seconds": round(seconds, 2),
            "worst_agreement": min(agreements) if agreements else None,
            "worst_error_lsb": max(errors) if errors else None,
            "float_ms": round(speed.float_ms, 3), "int8_ms": round(speed.int8_ms, 3),
            "fp32_over_int8": round(speed.float_ms / speed.int8_ms, 2), "float_ops": speed.float_ops}


def main() -> None:
    _common.setup_threads()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for index, (label, model, batches) in enumerate([*_zoo_cases(), *_onnx_cases()]):
            results.append(_row(label, model, batches, Path(folder) / str(index)))
    _common.print_table(
        ["model", "outputs", "sim vs ORT worst agreement", "worst error (LSB)", "FP32 ms", "int8 ms",
         "FP32 / int8", "in float between Q/DQ"],
        [[r["model"], r["outputs"], "-" if r["worst_agreement"] is None else f"{r['worst_agreement']:.1%}",
          "-" if r["worst_error_lsb"] is None else f"{r['worst_error_lsb']:.0f}", r["float_ms"], r["int8_ms"],
          f"{r['fp32_over_int8']:.2f}x", ", ".join(f"{op} ×{n}" for op, n in sorted(r["float_ops"].items())) or "-"]
         for r in results])
    path = _common.write_results("bench_models_in_the_wild", {"rows": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
