"""LoRA adapters on the quantized MobileNetV2: switching cost, accuracy against a fresh calibration, export sizes.

A peft LoRA model (rank 8 on the last 1×1 convolutions and the classifier; adapters with seeded random B, so each
changes the network's outputs) is quantized at W8A8 with adapter ``a`` on 64 crops. Then adapter ``b`` is loaded
from peft's ``save_pretrained`` folder, set and calibrated (``calibrate_adapter``, same 64 crops): the median seconds
of such a switch against a full ``sim.calibrate`` of the same images (of a copy of the sim; alternated, 11 rounds
each); the base's encodings before and after; top-1 agreement of the switched sim and of a sim calibrated from
scratch with ``b`` with the float model running ``b`` (bench_ptq's 512 held-out images); and the size of one
adapter's export against the base's.

    .venv/bin/python bench/bench_lora.py
"""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import peft  # noqa: E402
import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.torch.adapters import adapter_keys  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402

ADAPTED = ["features.16.conv.0.0", "features.16.conv.2", "features.17.conv.0.0", "features.17.conv.2",
           "features.18.0", "classifier.1"]
EVALUATION_IMAGES = 512
ROUNDS = 11


def lora_model():
    torch.manual_seed(0)  # peft draws lora_A at random
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=ADAPTED, lora_dropout=0.0)
    model = peft.get_peft_model(pretrained_mobilenet_v2().eval(), config, adapter_name="a")
    model.add_adapter("b", config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if "lora_B" in key:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.eval()


def switch_and_calibrate_seconds(sim, folder: Path, calib, rounds: int = ROUNDS) -> tuple[float, float, float]:
    """Median seconds of a full ``sim.calibrate``, of the first switch (load_adapter + set_adapter +
    calibrate_adapter of a new adapter: the base's part runs) and of later switches on the same images (the
    base's part is reused), full calibrations and switches alternated so machine noise hits both alike. The full
    calibrations run on a copy: between a deployed sim's switches nothing recalibrates its base."""
    calibrated = copy.deepcopy(sim)
    calibrate, switch = [], []
    for index in range(rounds):
        start = time.perf_counter()
        calibrated.calibrate(calib)
        calibrate.append(time.perf_counter() - start)
        start = time.perf_counter()
        sim.load_adapter(folder, f"b{index}").set_adapter(f"b{index}").calibrate_adapter(calib)
        switch.append(time.perf_counter() - start)
    return statistics.median(calibrate), switch[0], statistics.median(switch[1:])


def agreement(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    return float((outputs.argmax(1) == reference.argmax(1)).float().mean())


def main() -> None:
    _common.setup_threads()
    calib = _common.calibration_batches(n_images=64)
    evals, _ = _common.evaluation_batches(n_augmented=EVALUATION_IMAGES - 20)
    model = lora_model()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder / "saved", selected_adapters=["b"])
        start = time.perf_counter()
        sim = lowbit.quantize(model, calib, target="default")
        quantize_seconds = time.perf_counter() - start
        keys = set(adapter_keys(sim))
        base = {k: q.encoding for k, q in sim.quantizers().items() if k not in keys}
        base_paths = sim.export(folder / "export", "base")
        timing = copy.deepcopy(sim)
        sim.load_adapter(folder / "saved" / "b", "b_loaded").set_adapter("b_loaded").calibrate_adapter(calib)
        unchanged = all(torch.equal(q.encoding.scale, base[k].scale) and torch.equal(q.encoding.offset, base[k].offset)
                        for k, q in sim.quantizers().items() if k in base)
        adapter_paths = sim.export_adapter(folder / "export")
        adapter_bytes = adapter_paths.weights.stat().st_size + adapter_paths.encodings.stat().st_size
        base_bytes = sum(p.stat().st_size for p in base_paths)
        only_b = copy.deepcopy(model)
        only_b.set_adapter("b")
        fresh = lowbit.quantize(only_b, calib, target="default")
        with torch.no_grad():
            reference = torch.cat([only_b(x) for x in evals])
            switched = agreement(torch.cat([sim(x) for x in evals]), reference)
            scratch = agreement(torch.cat([fresh(x) for x in evals]), reference)
        calibrate_seconds, first_switch, switch_seconds = switch_and_calibrate_seconds(timing, folder / "saved" / "b",
                                                                                       calib)
    row = {"quantize_seconds": quantize_seconds, "calibrate_seconds": calibrate_seconds,
           "first_switch_seconds": first_switch, "switch_seconds": switch_seconds, "switch_over_calibrate": switch_seconds / calibrate_seconds,
           "base_encodings_unchanged": unchanged, "agreement_switched": switched, "agreement_fresh": scratch,
           "adapter_export_bytes": adapter_bytes, "base_export_bytes": base_bytes,
           "adapter_over_base": adapter_bytes / base_bytes}
    _common.print_table(["adapter b (W8A8)", "first switch s", "switch s (load + calibrate_adapter, 64 images)",
                         "sim.calibrate s",
                         "switch / calibrate", "switch / lowbit.quantize", "base encodings", "agreement switched", "agreement fresh sim",
                         "adapter export / base export"],
                        [["MobileNetV2, rank 8, 6 layers", f"{first_switch:.2f}", f"{switch_seconds:.2f}", f"{calibrate_seconds:.2f}",
                          f"{row['switch_over_calibrate']:.2f}", f"{switch_seconds / quantize_seconds:.2f}", "unchanged" if unchanged else "**changed**",
                          f"{switched:.1%}", f"{scratch:.1%}",
                          f"{adapter_bytes / 1024:.0f} KiB / {base_bytes / 2**20:.1f} MiB = {row['adapter_over_base']:.1%}"]])
    path = _common.write_results("bench_lora", {"evaluation_images": EVALUATION_IMAGES, "calibration_images": 64,
                                                "adapted_layers": ADAPTED, "rank": 8, **row})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
