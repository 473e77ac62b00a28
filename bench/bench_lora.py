"""LoRA adapters on the quantized MobileNetV2: switching cost, accuracy against a fresh calibration, export sizes.

For each placement (rank 8 on the last blocks' 1×1 convolutions and the classifier, as the example trains them; on
the last convolution and the classifier only), a peft LoRA model with adapters ``a`` and ``b`` (seeded random B, so
each changes the network's outputs) is quantized at W8A8 on 64 crops (the base's ranges cover both). Then adapter
``b`` is loaded again from peft's ``save_pretrained`` folder, set and calibrated (``calibrate_adapter``, same 64
crops): the median seconds of such a switch against a full ``sim.calibrate`` of the same images (of a sim of the
model with ``b`` alone) and against the float floor of a switch (the peft model's own layers from the first adapted
block on, run on that block's inputs: what any calibration of the adapter computes at least), alternated, 11 rounds
each; ``set_adapter`` alone between the adapters the full calibration calibrated; the base's encodings before and
after; top-1 agreement of the switched sim and of a sim of the model with ``b`` alone with the float model running
``b`` (bench_ptq's 512 held-out images); and the size of one adapter's export against the base's.

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

PLACEMENTS = {
    "last 3 blocks + classifier, 6 layers": ["features.16.conv.0.0", "features.16.conv.2", "features.17.conv.0.0",
                                             "features.17.conv.2", "features.18.0", "classifier.1"],
    "last conv + classifier, 2 layers": ["features.18.0", "classifier.1"],
}
EVALUATION_IMAGES = 512
ROUNDS = 11


def lora_model(adapted: list[str]):
    torch.manual_seed(0)  # peft draws lora_A at random
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=adapted, lora_dropout=0.0)
    model = peft.get_peft_model(pretrained_mobilenet_v2().eval(), config, adapter_name="a")
    model.add_adapter("b", config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, parameter in model.named_parameters():
            if "lora_B" in key:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.eval()


def switch_and_calibrate_seconds(sim, single, folder: Path, calib, floor, rounds: int = ROUNDS) -> tuple[float, ...]:
    """Median seconds of a full calibration of ``single`` (a sim with one adapter), of the first switch of ``sim``
    (load_adapter + set_adapter + calibrate_adapter of a new adapter: the base's part runs), of later switches on the
    same images (the base's part is reused) and of ``floor``, alternated so machine noise hits all alike."""
    calibrate, switch, floors = [], [], []
    for index in range(rounds):
        start = time.perf_counter()
        single.calibrate(calib)
        calibrate.append(time.perf_counter() - start)
        start = time.perf_counter()
        sim.load_adapter(folder, f"b{index}").set_adapter(f"b{index}").calibrate_adapter(calib)
        switch.append(time.perf_counter() - start)
        start = time.perf_counter()
        floor()
        floors.append(time.perf_counter() - start)
    return statistics.median(calibrate), switch[0], statistics.median(switch[1:]), statistics.median(floors)


def set_adapter_seconds(sim, names: list[str], rounds: int = ROUNDS) -> float:
    """Median seconds of ``sim.set_adapter`` between adapters the full calibration calibrated (ends on names[-1])."""
    times = []
    for _ in range(rounds):
        for name in names:
            start = time.perf_counter()
            sim.set_adapter(name)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def float_tail_run(model, calib, first_block: int):
    """A call running the float peft model's layers from the first adapted block on, over the calibration batches'
    inputs to that block: the work left after the base's kept part, with no sim around it."""
    network = model.get_base_model()
    with torch.no_grad():
        inputs = [network.features[:first_block](x) for x in calib]

    def run() -> None:
        with torch.no_grad():
            for x in inputs:
                pooled = torch.nn.functional.adaptive_avg_pool2d(network.features[first_block:](x), (1, 1))
                network.classifier(torch.flatten(pooled, 1))
    return run


def agreement(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    return float((outputs.argmax(1) == reference.argmax(1)).float().mean())


def measure(adapted: list[str], calib, evals) -> dict:
    """One placement's figures (see the module docstring)."""
    model = lora_model(adapted)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model.save_pretrained(folder / "saved", selected_adapters=["b"])
        start = time.perf_counter()
        sim = lowbit.quantize(model, calib, target="default")
        quantize_seconds = time.perf_counter() - start
        keys = set(adapter_keys(sim))
        base = {k: q.encoding for k, q in sim.quantizers().items() if k not in keys}
        base_paths = sim.export(folder / "export", "base")
        set_seconds = set_adapter_seconds(sim, ["b", "a"])
        timing = copy.deepcopy(sim)
        sim.load_adapter(folder / "saved" / "b", "b_loaded").set_adapter("b_loaded").calibrate_adapter(calib)
        unchanged = all(torch.equal(q.encoding.scale, base[k].scale) and torch.equal(q.encoding.offset, base[k].offset)
                        for k, q in sim.quantizers().items() if k in base)
        adapter_paths = sim.export_adapter(folder / "export")
        adapter_bytes = adapter_paths.weights.stat().st_size + adapter_paths.encodings.stat().st_size
        base_bytes = sum(p.stat().st_size for p in base_paths)
        only_b = copy.deepcopy(model)
        only_b.set_adapter("b")
        only_b.delete_adapter("a")
        fresh = lowbit.quantize(only_b, calib, target="default")
        with torch.no_grad():
            reference = torch.cat([only_b(x) for x in evals])
            switched = agreement(torch.cat([sim(x) for x in evals]), reference)
            scratch = agreement(torch.cat([fresh(x) for x in evals]), reference)
        model.set_adapter("b")
        first_block = int(adapted[0].split(".")[1])
        calibrate_seconds, first_switch, switch_seconds, float_tail = switch_and_calibrate_seconds(
            timing, fresh, folder / "saved" / "b", calib, float_tail_run(model, calib, first_block))
    return {"adapted_layers": adapted, "quantize_seconds": quantize_seconds, "calibrate_seconds": calibrate_seconds,
            "first_switch_seconds": first_switch, "switch_seconds": switch_seconds, "set_adapter_seconds": set_seconds,
            "switch_over_calibrate": switch_seconds / calibrate_seconds, "float_tail_seconds": float_tail,
            "float_tail_over_calibrate": float_tail / calibrate_seconds, "base_encodings_unchanged": unchanged,
            "agreement_switched": switched, "agreement_fresh": scratch, "adapter_export_bytes": adapter_bytes,
            "base_export_bytes": base_bytes, "adapter_over_base": adapter_bytes / base_bytes}


def main() -> None:
    _common.setup_threads()
    calib = _common.calibration_batches(n_images=64)
    evals, _ = _common.evaluation_batches(n_augmented=EVALUATION_IMAGES - 20)
    rows = {label: measure(adapted, calib, evals) for label, adapted in PLACEMENTS.items()}
    _common.print_table(["adapters b (rank 8, W8A8)", "set_adapter s (calibrated together)", "first switch s",
                         "switch s (load + calibrate_adapter)",
                         "sim.calibrate s", "switch / calibrate", "float tail / calibrate", "switch / lowbit.quantize",
                         "base encodings", "agreement switched", "agreement fresh sim", "adapter export / base export"],
                        [[label, f"{r['set_adapter_seconds']:.4f}", f"{r['first_switch_seconds']:.2f}",
                          f"{r['switch_seconds']:.3f}",
                          f"{r['calibrate_seconds']:.2f}", f"{r['switch_over_calibrate']:.3f}",
                          f"{r['float_tail_over_calibrate']:.3f}", f"{r['switch_seconds'] / r['quantize_seconds']:.3f}",
                          "unchanged" if r["base_encodings_unchanged"] else "**changed**",
                          f"{r['agreement_switched']:.1%}", f"{r['agreement_fresh']:.1%}",
                          f"{r['adapter_export_bytes'] / 1024:.0f} KiB / {r['base_export_bytes'] / 2**20:.1f} MiB = "
                          f"{r['adapter_over_base']:.1%}"] for label, r in rows.items()])
    path = _common.write_results("bench_lora", {"evaluation_images": EVALUATION_IMAGES, "calibration_images": 64,
                                                "rank": 8, "placements": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
