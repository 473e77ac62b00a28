"""Two LoRA adapters on one quantized MobileNetV2: is the photo blurred, is it noisy (camera-side quality checks).

The base (torchvision's ImageNet MobileNetV2, shipped in a wheel) is quantized and calibrated once; each task gets
a peft LoRA adapter (rank 8 on the last 1×1 convolutions and the classifier; a task's classes are the first logits),
trained in float on labels, then calibrated on the quantized base (``calibrate_adapter``) and trained further with
lowbit's QAT on the frozen quantized base, on the same labels: the adapter's weights only, its calibrated ranges kept
(docs/qat.md's advice for few images). Training images: crops of scikit-image's 16 photos; test images: crops of the 20
ImageNet photos of foolbox (never trained on). Prints float vs quantized accuracy per task, switching adapters.

    pip install 'lowbit[lora]'
    python examples/lora_mobilenet.py            # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import peft
import torch
import torch.nn.functional as F

import lowbit
from lowbit.zoo import augmented, calibration_photos, labelled_photos, photos_to_batch, pretrained_mobilenet_v2

ADAPTED = ["features.16.conv.0.0", "features.16.conv.2", "features.17.conv.0.0", "features.17.conv.2",
           "features.18.0", "classifier.1"]


def blurred(images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the images blurred (Gaussian, σ = 2 px); the label says which."""
    labels = torch.randint(0, 2, (len(images),), generator=torch.Generator().manual_seed(seed))
    taps = torch.exp(-torch.arange(-4, 5, dtype=torch.float32) ** 2 / 8)
    kernel = (taps[:, None] * taps[None, :] / taps.sum() ** 2).expand(3, 1, 9, 9)
    soft = F.conv2d(F.pad(images, (4, 4, 4, 4), mode="reflect"), kernel, groups=3)
    return torch.where(labels[:, None, None, None].bool(), soft, images), labels


def noisy(images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the images with Gaussian noise (σ = 0.25 of the normalised input's unit); the label says which."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (len(images),), generator=generator)
    noise = torch.randn(images.shape, generator=generator) * 0.25
    return images + noise * labels[:, None, None, None], labels


TASKS = {"blur": (blurred, 2), "noise": (noisy, 2)}


def task_batches(photos, task: str, batches: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    make, _ = TASKS[task]
    images = photos_to_batch(augmented(photos, batches * batch, seed=seed))
    return [make(images[i:i + batch], seed + i) for i in range(0, len(images), batch)]


def accuracy(model, data, classes: int) -> float:
    with torch.no_grad():
        hits = sum(int((model(x)[:, :classes].argmax(1) == y).sum()) for x, y in data)
    return hits / sum(len(y) for _, y in data)


def train_float(model, data, classes: int, steps: int, lr: float) -> None:
    """Plain PyTorch training of the peft model's active adapter (peft freezes the base's weights; the model stays
    in eval mode so the base's BatchNorm statistics, shared by every adapter, do not follow this task's images)."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        x, y = data[step % len(data)]
        loss = F.cross_entropy(model(x)[:, :classes], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float-steps", type=int, default=60)
    parser.add_argument("--qat-steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    train_photos = [image for image, _ in calibration_photos()]
    test_photos = [image for image, _, _ in labelled_photos()]
    data = {task: task_batches(train_photos, task, 8, args.batch, seed=100 * n) for n, task in enumerate(TASKS)}
    test = {task: task_batches(test_photos, task, 4, 32, seed=7 + n) for n, task in enumerate(TASKS)}

    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=ADAPTED, lora_dropout=0.0)
    model = peft.get_peft_model(pretrained_mobilenet_v2().eval(), config, adapter_name="blur")
    model.add_adapter("noise", config)
    floats = {}
    for task, (_, classes) in TASKS.items():
        model.set_adapter(task)
        train_float(model, data[task], classes, args.float_steps, lr=1e-3)
        floats[task] = accuracy(model, test[task], classes)
    model.set_adapter("blur")

    calibration = [x for x, _ in data["blur"]]
    sim = lowbit.quantize(model, calibration, target="default")  # the base: quantized and calibrated once
    rows = []
    for task, (_, classes) in TASKS.items():
        sim.set_adapter(task)
        switch = time.perf_counter()
        sim.calibrate_adapter([x for x, _ in data[task]])
        switch = time.perf_counter() - switch
        quantized = accuracy(sim, test[task], classes)
        lowbit.qat(sim, data[task], steps=args.qat_steps, lr=1e-4, range_learning=False, transform=lambda b: b[0],
                   loss=lambda out, b, classes=classes: F.cross_entropy(out[:, :classes], b[1]))
        rows.append((task, classes, floats[task], quantized, accuracy(sim, test[task], classes), switch))
    sim.set_adapter("blur")  # back to the first: its trained weights and encodings return
    check = accuracy(sim, test["blur"], 2)
    print("| task | classes | float adapter | quantized (W8A8, adapter calibrated) | after adapter QAT | "
          "calibrate_adapter s |")
    print("|---|---|---|---|---|---|")
    for task, classes, fp, q, trained, seconds in rows:
        print(f"| {task} | {classes} | {fp:.1%} | {q:.1%} | {trained:.1%} | {seconds:.1f} |")
    print(f"\nswitched back to blur: {check:.1%} (as after its QAT); {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
