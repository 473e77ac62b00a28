"""Accuracy and latency figures of one tool's run, computed the same way for every tool."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from _common import alternated_times
from runner_common import ort_session

LATENCY_REPEATS = {1: 30, 32: 4}


def agreement(reference: np.ndarray, outputs: np.ndarray) -> dict:
    """Top-1 / top-5 agreement with ``reference`` logits and mean KL(reference ‖ outputs) in nats.

    Top-5 agreement: the reference's top-1 class is among the outputs' five highest."""
    top1 = reference.argmax(1)
    top5 = np.argsort(-outputs, axis=1)[:, :5]
    log_p, log_q = _log_softmax(reference), _log_softmax(outputs)
    return {"top1_agreement": float((outputs.argmax(1) == top1).mean()),
            "top5_agreement": float((top5 == top1[:, None]).any(1).mean()),
            "mean_kl": float((np.exp(log_p) * (log_p - log_q)).sum(1).mean())}


def labelled_top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy on the images with a known label (label >= 0)."""
    known = labels >= 0
    return float((outputs[known].argmax(1) == labels[known]).mean())


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def latency(fp32_path: Path, int8_path: Path, images: np.ndarray) -> dict:
    """Median onnxruntime latency (ms) of both models at batch 1 and 32, runs alternated so noise hits both;
    sessions do not spin-wait, so one session's idle threads do not slow the other (as in latency.py)."""
    sessions = {"fp32": ort_session(fp32_path, spinning=False), "int8": ort_session(int8_path, spinning=False)}
    figures = {}
    for batch, repeats in LATENCY_REPEATS.items():
        x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
        times = alternated_times({key: (lambda r=runtime: r.run(None, {r.get_inputs()[0].name: x}))
                                  for key, runtime in sessions.items()}, repeats)
        fp32, int8 = (statistics.median(times[k]) * 1e3 for k in ("fp32", "int8"))
        figures[f"batch_{batch}"] = {"fp32_ms": fp32, "int8_ms": int8, "speedup": fp32 / int8}
    return figures
