"""A sim whose ranges were trained exports what it computes: the encodings the files carry are the
learned ones even when no forward ran after the last optimizer step, and onnxruntime executing the
exported QDQ file agrees with the sim."""

from __future__ import annotations

import torch

import lowbit
from lowbit.zoo import tiny_resnet


def test_trained_ranges_are_exported_as_the_sim_computes_them(tmp_path):
    torch.manual_seed(0)
    model = tiny_resnet().eval()
    data = [torch.randn(8, 3, 32, 32) for _ in range(3)]
    sim = lowbit.quantize(model, data, target="w4a8")
    quantizers = list(sim.quantizers().values())
    calibrated = [q.encoding.scale.clone() for q in quantizers]
    for quantizer in quantizers:
        quantizer.learn_ranges()
    optimizer = torch.optim.Adam([p for q in quantizers for p in q.parameters()], lr=1e-3)
    with torch.no_grad():
        targets = [model(x) for x in data]
    for x, target in zip(data, targets):
        loss = torch.nn.functional.mse_loss(sim(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # the last step is followed by no forward before the export
    assert any(not torch.equal(q.encoding.scale, before) for q, before in zip(quantizers, calibrated))
    paths = sim.export(tmp_path, name="trained", verify=data[:1])
    assert paths.fidelity.top1_agreement == 1.0 and paths.fidelity.max_error_lsb <= 1.0, paths.fidelity.row()
