"""What the cpu-int8 preset costs on each runtime it can target: the sim predicting onnxruntime with
VNNI (exact int32 sums) and without (int16 pairs), with the weight bits the preset gives each (8; 7 with
8 on depthwise convolutions) and, for comparison, the 7-bit preset on the VNNI runtime (what a VNNI
user paid when the preset did not follow the runtime). Top-1 agreement with the FP32 model and
accuracy against the labels of the 20 labelled photos and crops of them.

    .venv/bin/python bench/bench_runtime_presets.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.target import load_target  # noqa: E402
from lowbit.zoo import pretrained_efficientnet_lite0, pretrained_mobilenet_v2  # noqa: E402

SETTINGS = (("onnxruntime-cpu-vnni", "preset"), ("onnxruntime-cpu-vnni", "7-bit preset"),
            ("onnxruntime-cpu-avx2", "preset"))


def _target(setting: str):
    """cpu-int8, or (``"7-bit preset"``) cpu-int8 without its runtime entry: 7-bit weights everywhere."""
    if setting == "preset":
        return "cpu-int8"
    config = load_target("cpu-int8").to_json()
    del config["lowbit"]["runtime_param_bits"]
    return load_target(config)


def _top1(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(batch).argmax(1) for batch in batches])


def main() -> None:
    _common.setup_threads()
    calibration = _common.calibration_batches(n_images=64, batch=32)
    evaluation, labels = _common.evaluation_batches(n_augmented=108, batch=32)
    rows, results = [], []
    for name, build in (("MobileNetV2", pretrained_mobilenet_v2), ("EfficientNet-Lite0", pretrained_efficientnet_lite0)):
        model = build().eval()
        reference = _top1(model, evaluation)
        for runtime, setting in SETTINGS:
            start = time.perf_counter()
            sim = lowbit.quantize(model, calibration, target=_target(setting), runtime=runtime)
            predicted = _top1(sim, evaluation)
            bits = sorted({q.spec.bits for k, q in sim.quantizers().items() if sim.point(k).role == "weight"})
            agreement = float((predicted == reference).float().mean())
            accuracy = float((predicted == labels).float().mean())
            rows.append([name, runtime, setting, "/".join(map(str, bits)), f"{agreement:.1%}", f"{accuracy:.1%}"])
            results.append({"model": name, "runtime": runtime, "setting": setting, "weight_bits": bits,
                            "agreement": agreement, "top1_labels": accuracy,
                            "seconds": time.perf_counter() - start})
    _common.print_table(["model", "runtime the sim predicts", "cpu-int8", "weight bits", "agreement with FP32",
                         "top-1 (labels)"], rows)
    print(f"wrote {_common.write_results('bench_runtime_presets', {'images': len(labels), 'results': results})}")


if __name__ == "__main__":
    main()
