"""LiteRT int8 files of the Keras MobileNetV2 (lowbit.zoo.keras_mobilenet_v2) and the PyTorch MobileNetV2, run by
LiteRT: top-1 agreement with FP32, sim↔LiteRT agreement and max error in output LSB, LiteRT int8 vs float latency
at batch 1, file sizes. LiteRT's own converter (post-training int8 with a representative dataset of the same
calibration images) is the baseline.

Calibration: 256 augmented crops of scikit-image's photos. Evaluation: the 20 labelled ImageNet photos plus 492 crops
of them (512 images, as bench_ptq). Under ``KERAS_BACKEND=torch`` the Keras rows run on a torch-backend Keras model
(LiteRT's converter and the float file need TensorFlow: no converter row, no float latency there). Rows of earlier
runs stay in the JSON (each records its machine) unless this run redoes them.

    .venv/bin/python bench/bench_litert.py
    .venv/bin/python bench/bench_litert.py --rows keras-lowbit-minmax,keras-litert-converter --latency-repeats 20
    KERAS_BACKEND=torch .venv/bin/python bench/bench_litert.py --rows keras-lowbit-minmax
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.litert import LiteRtModel  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402
from lowbit.zoo.keras_mobilenet_v2 import keras_mobilenet_v2  # noqa: E402

N_LABELLED = 20
EVALUATION_IMAGES = 512
ROWS = {
    "keras-litert-converter": ("keras", None, ()),
    "keras-lowbit-minmax": ("keras", "minmax", ()),
    "keras-lowbit-bias-correction-sqnr": ("keras", "sqnr", ("bias_correction",)),
    "pytorch-lowbit-minmax": ("pytorch", "minmax", ()),
    "pytorch-lowbit-adaround": ("pytorch", "minmax", ("adaround",)),
}
"""Row → (model, lowbit's calibration scheme or None for LiteRT's converter, lowbit techniques)."""


def nhwc(batch: torch.Tensor) -> np.ndarray:
    return batch.permute(0, 2, 3, 1).numpy()


def converter_file(model, calibration: list[np.ndarray], int8: bool) -> bytes:
    """LiteRT's converter on the Keras model: float, or int8 calibrated on ``calibration`` (float input and output)."""
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        images = np.concatenate(calibration)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def agreement(outputs: np.ndarray, fp32: np.ndarray) -> float:
    return float((outputs.argmax(1) == fp32.argmax(1)).mean())


def latency(files: dict[str, tuple[Path, np.ndarray]], repeats: int) -> dict[str, float]:
    """Median seconds of one image (given per file, in its layout) through each file in LiteRT (2 threads), the
    files alternated."""
    runs = {name: (LiteRtModel(path, threads=2), image) for name, (path, image) in files.items()}
    times = _common.alternated_times({name: (lambda r=r, x=x: r(x)) for name, (r, x) in runs.items()}, repeats)
    return {name: sorted(values)[len(values) // 2] for name, values in times.items()}


def run_row(name: str, data: dict, folder: Path, repeats: int) -> dict:
    kind, scheme, techniques = ROWS[name]
    calibration, evaluation, fp32 = data[kind]
    path = folder / f"{name}.tflite"
    start = time.perf_counter()
    model = f"keras ({keras.backend.backend()} backend)" if kind == "keras" else kind
    row = {"model": f"{model} MobileNetV2", "tool": "LiteRT converter" if scheme is None else "lowbit",
           "scheme": scheme, "techniques": list(techniques), "machine": _common.machine_info()}
    if scheme is None:
        path.write_bytes(converter_file(data["keras_model"], calibration, int8=True))
    else:
        model = data["keras_model"] if kind == "keras" else pretrained_mobilenet_v2().eval()
        sim = lowbit.quantize(model, calibration, target="litert-int8", scheme=scheme, techniques=techniques)
        written = sim.export_tflite(path, verify=evaluation)
        row["sim_vs_litert"] = {"top1_agreement": written.fidelity.top1_agreement,
                                "max_error_lsb": written.fidelity.max_error_lsb}
    row["seconds"] = time.perf_counter() - start
    runtime = LiteRtModel(path)
    outputs = np.concatenate([runtime(batch)[0] for batch in evaluation])
    row["top1_agreement"] = agreement(outputs, fp32)
    row["file_mib"] = path.stat().st_size / 2 ** 20
    image = data["keras"][1][0][:1]  # the float file is the Keras model's: NHWC
    files = {"int8": (path, np.asarray(evaluation[0][:1]))}
    if data["float_file"] is not None:
        files["float"] = (data["float_file"], image)
    times = latency(files, repeats)
    row["latency_ms"] = {kind: 1000 * seconds for kind, seconds in times.items()}
    return row


def result_key(name: str) -> str:
    """The row's key in the JSON: Keras rows under a backend other than TensorFlow say which."""
    backend = keras.backend.backend()
    return name if ROWS[name][0] != "keras" or backend == "tensorflow" else f"{name}-{backend}-backend"


def markdown_row(name: str, r: dict) -> list:
    fidelity = r.get("sim_vs_litert")
    return [r["model"], r["tool"] + (f" ({r['scheme']}" + "".join(f" + {t}" for t in r["techniques"]) + ")"
                                     if r["scheme"] else ""),
            f"{r['top1_agreement']:.1%}",
            f"{fidelity['top1_agreement']:.1%}, {fidelity['max_error_lsb']:.1f} LSB" if fidelity else "–",
            f"{r['latency_ms']['float']:.1f}" if "float" in r["latency_ms"] else "–",
            f"{r['latency_ms']['int8']:.1f}",
            f"{r['file_mib']:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(r for r in ROWS if not r.endswith("adaround")),
                        help=f"comma-separated rows of {', '.join(ROWS)}")
    parser.add_argument("--latency-repeats", type=int, default=30)
    args = parser.parse_args()
    names = args.rows.split(",")
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown row {unknown[0]}")
    tensorflow = keras.backend.backend() == "tensorflow"
    if not tensorflow and "keras-litert-converter" in names:
        parser.error("keras-litert-converter needs the TensorFlow backend (LiteRT's converter takes TF models)")
    _common.setup_threads()
    calibration = _common.calibration_batches(n_images=256)
    evaluation, _ = _common.evaluation_batches(n_augmented=EVALUATION_IMAGES - N_LABELLED)
    keras_model = keras_mobilenet_v2()
    with torch.no_grad():
        torch_fp32 = torch.cat([pretrained_mobilenet_v2().eval()(b) for b in evaluation]).numpy()
    keras_evaluation = [nhwc(b) for b in evaluation]
    data = {"keras": ([nhwc(b) for b in calibration], keras_evaluation,
                      np.concatenate([keras_model.predict(b, verbose=0) for b in keras_evaluation])),
            "pytorch": (calibration, evaluation, torch_fp32), "keras_model": keras_model}
    results, kept = {}, _common.previous_rows("bench_litert")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data["float_file"] = folder / "float.tflite" if tensorflow else None
        if tensorflow:
            data["float_file"].write_bytes(converter_file(keras_model, [], int8=False))
        for name in names:
            key = result_key(name)
            results[key] = run_row(name, data, folder, args.latency_repeats)
            print(f"{key}: {results[key]['top1_agreement']:.1%} ({results[key]['seconds']:.0f} s)", flush=True)
        float_mib = data["float_file"].stat().st_size / 2 ** 20 if tensorflow else None
    path = _common.write_results("bench_litert", {"evaluation_images": EVALUATION_IMAGES, "rows": {**kept, **results}})
    print()
    _common.print_table(["model", "int8 file by", "top-1 agreement with FP32", "sim↔LiteRT",
                         "LiteRT ms float (batch 1)", "LiteRT ms int8", "int8 file MiB"],
                        [markdown_row(n, r) for n, r in results.items()])
    print(f"\nfloat .tflite: {float_mib:.2f} MiB; wrote {path}" if float_mib else f"\nwrote {path}")


if __name__ == "__main__":
    main()
