"""On a CUDA device the sim, calibration and QAT run where the model's parameters are, and the export
(traced on the CPU) computes what the trained sim computes; skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.zoo import tiny_resnet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_qat_on_cuda_exports_what_it_computes(tmp_path):
    torch.manual_seed(0)
    model = tiny_resnet().eval().cuda()
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(16, 3, 32, 32, generator=generator).cuda() for _ in range(4)]
    sim = lowbit.quantize(model, data, target="w4a8")
    assert all(p.is_cuda for p in sim.parameters())
    result = lowbit.qat(sim, data, steps=8, lr=1e-4)
    assert result.steps == 8 and all(q.encoding.scale.is_cuda for q in sim.quantizers().values())
    paths = sim.export(tmp_path, name="tiny", verify=[x.cpu() for x in data[:1]])
    assert paths.fidelity.max_error_lsb <= 1.0, paths.fidelity.row()
