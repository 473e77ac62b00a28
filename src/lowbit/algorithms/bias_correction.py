"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction", §4.2), on tensors: subtract from the bias the output shift Δ = (W_q − W) E[x] of weight quantization."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BiasCorrectionResult:
    """What ``correct_bias`` changed: corrected layers (``from_statistics``: input mean from BatchNorm statistics),
    skipped weight-quantized layers, the mean |Δ| over corrected output channels, batches run, and the mode."""

    corrected: tuple[str, ...]
    skipped: tuple[str, ...]
    mean_abs_shift: float
    batches: int
    mode: str = "empirical"
    from_statistics: tuple[str, ...] = ()

    def __str__(self) -> str:
        derived = f" ({len(self.from_statistics)} from BatchNorm statistics)" if self.mode == "analytical" else ""
        skipped = f", skipped {', '.join(self.skipped)}" if self.skipped else ""
        return (f"bias correction ({self.mode}): {len(self.corrected)} layers{derived}, {self.batches} batches, "
                f"mean |shift| {self.mean_abs_shift:.3g}{skipped}")


class InputMean:
    """Running mean of a layer's input per input channel (``channel_dim`` 1 for convolutions, -1 for
    Linear), accumulated in float64 over every other dimension of each batch."""

    def __init__(self, channel_dim: int):
        self.channel_dim = channel_dim
        self.total: torch.Tensor | None = None
        self.count = 0

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        channels = x.detach().movedim(self.channel_dim, -1)
        channels = channels.reshape(-1, channels.shape[-1]).to(torch.float64)
        batch_sum = channels.sum(dim=0)
        self.total = batch_sum if self.total is None else self.total + batch_sum
        self.count += channels.shape[0]

    @property
    def mean(self) -> torch.Tensor | None:
        """E[x_c] per channel, or None before any batch."""
        return None if self.total is None else self.total / self.count


def expected_output_shift(weight_error: torch.Tensor, input_mean: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``Δ_o = Σ_{c,k} E[o, c, k] · E[x_c]`` for weight error ``E = W_q − W`` (``[out, in/groups, *kernel]``) and
    ``input_mean`` ``[in]``, channel ``o`` seeing only its group. Returns ``[out]`` in ``weight_error``'s dtype."""
    out_channels, per_group = weight_error.shape[:2]
    if out_channels % groups or input_mean.numel() != per_group * groups:
        raise ValueError(f"weight error {tuple(weight_error.shape)} with {groups} groups does not match "
                         f"{input_mean.numel()} input channels")
    summed = weight_error.detach().to(torch.float64).reshape(out_channels, per_group, -1).sum(dim=2)
    summed = summed.reshape(groups, out_channels // groups, per_group)
    means = input_mean.to(torch.float64).reshape(groups, per_group, 1)
    return torch.bmm(summed, means).reshape(out_channels).to(weight_error.dtype)


@torch.no_grad()
def correct_bias_(bias: torch.Tensor, shift: torch.Tensor) -> None:
    """In place: ``bias −= Δ`` (through the tensor itself, so its version counter moves)."""
    bias.sub_(shift.to(bias.dtype))


def keeps_bias(weight_quantizer) -> bool:
    """Whether bias correction leaves a layer alone: AdaRound rounded it, and its learned rounding
    already fits the layer's output mean on quantized inputs (correcting it again undoes that)."""
    return weight_quantizer.frozen_by == "adaround"
