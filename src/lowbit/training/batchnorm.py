"""BatchNorm re-estimation: after training, each BatchNorm's running statistics recomputed as the average
over data of the batch statistics the trained model produces (reversible)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lowbit.data import channels_last_call, checked_calls, move_call
from lowbit.distributed import shard, world
from lowbit.torch.eval_mode import eval_mode


@dataclass
class BatchNormStatistics:
    """The running statistics each BatchNorm held before re-estimation; :meth:`restore` puts them back."""

    saved: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    modules: dict[str, nn.Module]
    batches: int

    def restore(self) -> None:
        """Undo the re-estimation."""
        with torch.no_grad():
            for name, (mean, var, count) in self.saved.items():
                module = self.modules[name]
                module.running_mean.copy_(mean)
                module.running_var.copy_(var)
                module.num_batches_tracked.copy_(count)

    def __str__(self) -> str:
        return f"reestimate batchnorm: {len(self.saved)} layers on {self.batches} batches"


def batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm modules of ``model`` that track running statistics, by name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats}


def reestimate_batchnorm(model: nn.Module, data, num_batches: int | None = None, transform=None) -> BatchNormStatistics:
    """Recompute every BatchNorm's running mean and variance of ``model`` (a sim or any module) on ``data``: the
    cumulative average of the batch statistics, every other module in eval mode; returns the previous statistics."""
    modules = batchnorms(model)
    if not modules:
        return BatchNormStatistics({}, {}, 0)
    saved = {name: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for name, m in modules.items()}
    momenta = {name: m.momentum for name, m in modules.items()}
    device = next(iter(modules.values())).running_mean.device
    batches = 0
    try:
        with eval_mode(model), torch.no_grad():
            for module in modules.values():
                module.reset_running_stats()
                module.momentum = None  # a cumulative moving average: every batch weighs the same
                module.train()
            for args, kwargs in checked_calls(shard(data), transform, num_batches):
                args, kwargs = channels_last_call(*move_call(args, kwargs, device))
                model(*args, **kwargs)
                batches += 1
    except BaseException:
        BatchNormStatistics(saved, modules, 0).restore()
        raise
    finally:
        for name, module in modules.items():
            module.momentum = momenta[name]
    return BatchNormStatistics(saved, modules, _pooled(modules, batches))


def _pooled(modules: dict, batches: int) -> int:
    """Average every rank's statistics, weighted by its batch count (each batch weighs the same); all batches."""
    if world()[1] == 1:
        return batches
    count = torch.tensor(float(batches), device=next(iter(modules.values())).running_mean.device)
    dist.all_reduce(count)
    for module in modules.values():
        for statistic in (module.running_mean, module.running_var):
            weighted = statistic * (batches / float(count))
            dist.all_reduce(weighted)
            statistic.copy_(weighted)
    return int(count)
