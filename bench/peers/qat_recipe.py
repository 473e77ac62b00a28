"""bench_qat's recipe for the peers' QAT rows: W8A8 MobileNetV2 calibrated on bench_qat's 256 crops, trained as
``lowbit.qat`` trains (Adam, cosine decay to 0, distillation from the float model, the same fresh crops), scored
before and after on bench_ptq's 512 images, the trained model's top-1 checked against onnxruntime on its export."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common  # noqa: E402
from bench_qat import EVALUATION_IMAGES, N_LABELLED, TrainingCrops, figures, step_cost  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lowbit.training.loop import distillation_loss  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402


def train(student, teacher, data, steps: int, lr: float) -> list[float]:
    """Adam on ``student``'s trainable parameters, cosine decay to 0 over ``steps``, distillation from ``teacher``;
    returns the loss of every step."""
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    cosine = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    losses, done = [], 0
    student.train()
    while done < steps:
        for images in data:
            with torch.no_grad():
                target = teacher(images)
            loss = distillation_loss(student(images), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            done += 1
            if done == steps:
                break
    student.eval()
    return losses


def onnxruntime_agreement(path: Path, evals, outputs: torch.Tensor) -> float:
    """Top-1 agreement of onnxruntime running the file at ``path`` with the trained model's ``outputs``."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shipped = np.concatenate([session.run(None, {name: b.numpy()})[0] for b in evals])
    return float((shipped.argmax(1) == outputs.numpy().argmax(1)).mean())


def run_peer(name: str, tool: str, quantize, export, doc: str, **notes) -> None:
    """One peer's row (``bench/results/peers_qat_{name}.json``): ``quantize(model, calibration)`` returns the calibrated
    trainable module, ``export(module, example, path)`` writes the QDQ file onnxruntime runs; ``notes`` join the row."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches-per-epoch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-5)
    args = parser.parse_args()
    _common.setup_threads()
    teacher = pretrained_mobilenet_v2().eval()
    evals, _ = _common.evaluation_batches(n_augmented=EVALUATION_IMAGES - N_LABELLED)
    with torch.no_grad():
        fp32 = torch.cat([teacher(b) for b in evals])
    calib = _common.calibration_batches(n_images=256)
    quantized = quantize(pretrained_mobilenet_v2().eval(), calib)
    with torch.no_grad():
        before = figures(torch.cat([quantized(b) for b in evals]), fp32)
    start = time.perf_counter()
    losses = train(quantized, teacher, TrainingCrops(args.batches_per_epoch, args.batch), args.steps, args.lr)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        outputs = torch.cat([quantized(b) for b in evals])
    after = figures(outputs, fp32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trained.onnx"
        export(quantized, evals[0][:1], path)
        agreement = onnxruntime_agreement(path, evals, outputs)
    cost = step_cost(pretrained_mobilenet_v2(), quantized, calib[0][:args.batch])  # after the export: it steps
    row = {"tool": tool, "model": "mobilenet_v2", "setting": "w8a8", "steps": args.steps, "batch": args.batch,
           "lr": args.lr, **notes, "before": before, "after": after, "qat_seconds": seconds,
           "loss_first_last": [losses[0], losses[-1]], "torch_vs_onnxruntime_top1": agreement, **cost,
           "machine": _common.machine_info()}
    _common.write_results(f"peers_qat_{name}", row)
    print(f"| {tool} mobilenet_v2-w8a8 ({args.steps} steps × {args.batch}, lr {args.lr:g}) | "
          f"{before['top1_agreement']:.1%} | {after['top1_agreement']:.1%} | {before['mean_kl']:.4f} | "
          f"{after['mean_kl']:.4f} | {cost['qat_over_float']:.2f} | {agreement:.1%} (top-1, torch↔onnxruntime) | "
          f"{seconds:.0f} |")
