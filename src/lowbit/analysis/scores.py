"""How far a sim's outputs are from the float reference: SQNR in dB and, for class scores, mean KL."""

from __future__ import annotations

import math

import torch


def sqnr_db(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """10·log10(Σ reference² / Σ (outputs − reference)²) over every batch; inf when they are equal."""
    signal = sum(float(r.double().square().sum()) for r in reference)
    noise = sum(float((o.double() - r.double()).square().sum()) for r, o in zip(reference, outputs))
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-300) / noise)


def mean_kl(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float | None:
    """Mean KL(softmax(reference) ‖ softmax(outputs)) over rows of 2-D outputs, else None."""
    if any(r.dim() != 2 for r in reference):
        return None
    total, rows = 0.0, 0
    for r, o in zip(reference, outputs):
        log_p, log_q = torch.log_softmax(r.double(), 1), torch.log_softmax(o.double(), 1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
        rows += r.shape[0]
    return total / rows


def top1_agreement(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float | None:
    """Share of rows of 2-D outputs whose argmax matches the reference's, else None."""
    if any(r.dim() != 2 for r in reference):
        return None
    same = sum(int((r.argmax(1) == o.argmax(1)).sum()) for r, o in zip(reference, outputs))
    return same / sum(r.shape[0] for r in reference)
