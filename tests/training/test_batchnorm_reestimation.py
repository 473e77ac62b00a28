"""BatchNorm re-estimation recovers the true statistics of the data the sim now sees (a shifted input),
as the average of the per-batch statistics computed by hand from the BatchNorm's inputs, and restores
the previous ones on request."""

from __future__ import annotations

import torch
from torch import nn

import lowbit


def test_reestimation_recovers_the_statistics_of_a_shifted_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(8, 3, 12, 12, generator=generator) for _ in range(4)]
    sim = lowbit.quantize(model, data, target="w8a16", fold_batchnorm=False)
    [(name, batchnorm)] = [(n, m) for n, m in sim.model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    before = (batchnorm.running_mean.clone(), batchnorm.running_var.clone())
    shifted = [3 + 2 * x for x in data]
    inputs = []
    hook = batchnorm.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().double()))
    with torch.no_grad():
        for x in shifted:
            sim(x)
    hook.remove()
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs])
    variances = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1) for x in inputs])  # unbiased, as BN keeps
    statistics = lowbit.reestimate_batchnorm(sim, shifted)
    torch.testing.assert_close(batchnorm.running_mean.double(), means.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batchnorm.running_var.double(), variances.mean(0), rtol=1e-5, atol=1e-5)
    assert float((batchnorm.running_mean - before[0]).abs().max()) > 0.5  # the shift really moved them
    assert str(statistics) == "reestimate batchnorm: 1 layers on 4 batches"
    assert not sim.training and batchnorm.momentum == 0.1
    statistics.restore()
    assert torch.equal(batchnorm.running_mean, before[0]) and torch.equal(batchnorm.running_var, before[1])
