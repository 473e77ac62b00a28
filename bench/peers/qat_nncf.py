"""NNCF's quantization-aware training on bench_qat's recipe, for its peer row: ``nncf.quantize`` (INT8 defaults)
on the same 256 calibration crops, then ordinary fine-tuning of the returned model on the same training crops,
steps, batch, learning rate, Adam with cosine decay and distillation loss as ``lowbit.qat``; BatchNorm trains on
batch statistics (NNCF keeps it unfolded). Run in NNCF's venv (``bash bench/peers/install_nncf.sh .venv-peers/nncf``):

    NNCF_CI=1 .venv-peers/nncf/bin/python bench/peers/qat_nncf.py --steps 300 --batch 16 --lr 1e-5
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["NNCF_CI"] = "1"  # NNCF's telemetry becomes a stub
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common  # noqa: E402
from bench_qat import EVALUATION_IMAGES, N_LABELLED, TrainingCrops, figures, step_cost  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lowbit.training.loop import distillation_loss  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402


def train(student, teacher, data, steps: int, lr: float) -> list[float]:
    """lowbit.qat's loop, written out: Adam, cosine decay to 0 over ``steps``, distillation from ``teacher``."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches-per-epoch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-5)
    args = parser.parse_args()
    import nncf
    _common.setup_threads()
    teacher = pretrained_mobilenet_v2().eval()
    evals, _ = _common.evaluation_batches(n_augmented=EVALUATION_IMAGES - N_LABELLED)
    with torch.no_grad():
        fp32 = torch.cat([teacher(b) for b in evals])
    calib = _common.calibration_batches(n_images=256)
    quantized = nncf.quantize(pretrained_mobilenet_v2().eval(), nncf.Dataset(calib), subset_size=256)
    with torch.no_grad():
        before = figures(torch.cat([quantized(b) for b in evals]), fp32)
    start = time.perf_counter()
    losses = train(quantized, teacher, TrainingCrops(args.batches_per_epoch, args.batch), args.steps, args.lr)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        outputs = torch.cat([quantized(b) for b in evals])
    after = figures(outputs, fp32)
    with tempfile.TemporaryDirectory() as tmp:
        import onnxruntime
        path = Path(tmp) / "nncf.onnx"
        example = evals[0][:1]
        stripped = nncf.strip(quantized, example_input=example)
        torch.onnx.export(stripped, (example,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shipped = np.concatenate([session.run(None, {"input": b.numpy()})[0] for b in evals])
    agreement = float((shipped.argmax(1) == outputs.numpy().argmax(1)).mean())
    cost = step_cost(pretrained_mobilenet_v2(), quantized, calib[0][:args.batch])  # after the export: it steps
    row = {"tool": f"nncf {nncf.__version__}", "model": "mobilenet_v2", "setting": "w8a8", "steps": args.steps,
           "batch": args.batch, "lr": args.lr, "before": before, "after": after, "qat_seconds": seconds,
           "loss_first_last": [losses[0], losses[-1]], "torch_vs_onnxruntime_top1": agreement, **cost,
           "machine": _common.machine_info()}
    _common.write_results("peers_qat_nncf", row)
    print(f"| nncf mobilenet_v2-w8a8 ({args.steps} steps × {args.batch}, lr {args.lr:g}) | "
          f"{before['top1_agreement']:.1%} | {after['top1_agreement']:.1%} | {before['mean_kl']:.4f} | "
          f"{after['mean_kl']:.4f} | {cost['qat_over_float']:.2f} | {agreement:.1%} (top-1, torch↔onnxruntime) | "
          f"{seconds:.0f} |")


if __name__ == "__main__":
    main()
