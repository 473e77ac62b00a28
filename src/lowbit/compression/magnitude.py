"""Magnitude pruning: the smallest weights set to zero, unstructured (over the whole model or per layer) or
N:M structured (2:4: two of every four consecutive input weights kept); the zeros survive quantization exactly."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.errors import SpecError

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Pruned:
    """The pruned copy (``model``) and, per layer name, its ``masks`` (True: kept); :meth:`apply` zeroes the pruned
    weights again (after an optimizer step)."""

    model: nn.Module
    masks: dict[str, torch.Tensor]

    @torch.no_grad()
    def apply(self) -> None:
        for name, mask in self.masks.items():
            self.model.get_submodule(name).weight.mul_(mask)

    def sparsity(self) -> float:
        """The fraction of the masked layers' weights that are zero."""
        return 1 - sum(int(m.sum()) for m in self.masks.values()) / sum(m.numel() for m in self.masks.values())


def _layers(model: nn.Module, exclude) -> dict[str, nn.Module]:
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _LAYERS) and name not in exclude}
    unknown = sorted(set(exclude) - {name for name, _ in model.named_modules()})
    if unknown:
        raise SpecError(f"exclude names no layer of the model: {', '.join(unknown)}")
    return layers


def _n_of_m(weight: torch.Tensor, kept: int, group: int) -> torch.Tensor:
    """Mask keeping the ``kept`` largest magnitudes of every ``group`` consecutive input channels of each output
    (at each kernel position), the layout sparse tensor cores and runtimes read."""
    channels_last = weight.movedim(1, -1)
    if channels_last.shape[-1] % group:
        raise SpecError(f"{kept}:{group} sparsity needs input channels in multiples of {group}, "
                        f"got {channels_last.shape[-1]}")
    groups = channels_last.abs().reshape(-1, group)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(kept, dim=1).indices, True)
    return keep.reshape(channels_last.shape).movedim(-1, 1)


def _all_but_smallest(magnitudes: torch.Tensor, count: int) -> torch.Tensor:
    """A mask of ``magnitudes`` without its ``count`` smallest entries (exactly ``count``, ties broken by order)."""
    mask = torch.ones_like(magnitudes, dtype=torch.bool)
    mask[magnitudes.topk(count, largest=False).indices] = False
    return mask


@torch.no_grad()
def magnitude_prune(model: nn.Module, sparsity: float = 0.5, scope: str = "global", pattern: str | None = None,
                    exclude=()) -> Pruned:
    """A copy of ``model`` whose convolutions and Linear layers keep their largest weights: ``sparsity`` of them
    zeroed over all layers (``scope="global"``) or in each (``"layer"``), or ``pattern="2:4"`` (N:M) per group."""
    if scope not in ("global", "layer"):
        raise SpecError(f"scope is 'global' or 'layer', got {scope!r}")
    pruned = copy.deepcopy(model)
    layers = _layers(pruned, exclude)
    if pattern is not None:
        try:
            kept, group = (int(part) for part in pattern.split(":"))
        except ValueError:
            raise SpecError(f"pattern is N:M such as '2:4', got {pattern!r}") from None
        if not 0 < kept < group:
            raise SpecError(f"pattern N:M needs 0 < N < M, got {pattern!r}")
        masks = {name: _n_of_m(layer.weight, kept, group) for name, layer in layers.items()}
    else:
        if not 0 <= sparsity < 1:
            raise SpecError(f"sparsity is a fraction in [0, 1), got {sparsity}")
        groups = [list(layers)] if scope == "global" else [[name] for name in layers]
        masks = {}
        for names in groups:
            weights = [layers[name].weight for name in names]
            count = int(sparsity * sum(w.numel() for w in weights))
            kept = _all_but_smallest(torch.cat([w.abs().flatten() for w in weights]), count)
            for name, weight, mask in zip(names, weights, kept.split([w.numel() for w in weights])):
                masks[name] = mask.reshape(weight.shape)
    result = Pruned(pruned, masks)
    result.apply()
    return result
