"""lowbit.autoquant: it stops at the first stage that meets the target, resumes from its cache after an
interruption, and returns a sim whose score, recomputed by hand, is the one it reports."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from lowbit.analysis.autoquant import STAGES
from lowbit.runtime import session


def _agreement(model, net, data) -> float:
    with torch.no_grad():
        same = sum(int((model(x).argmax(1) == net(x).argmax(1)).sum()) for x in data)
    return same / sum(len(x) for x in data)


@pytest.fixture(scope="module")
def planted_run(planted, tmp_path_factory):
    model, data = planted
    out = tmp_path_factory.mktemp("autoquant")
    return out, lowbit.autoquant(model, data, allowed_drop=0.05, out_dir=out, adaround_iterations=50)


def test_easy_model_stops_after_the_first_stage(planted, tmp_path):
    model, data = planted
    easy = copy.deepcopy(model)
    with torch.no_grad():
        easy.conv2.bias[0] = 0  # no planted range problem
    result = lowbit.autoquant(easy, data, allowed_drop=0.2, out_dir=tmp_path)
    assert [stage.name for stage in result.stages] == ["minmax"] and result.met


@pytest.mark.slow
def test_planted_model_runs_until_a_stage_meets_the_target(planted_run, planted):
    _, result = planted_run
    model, data = planted
    assert result.float_score == 1.0 and result.target == pytest.approx(0.95)
    assert all(stage.score < result.target for stage in result.stages[:-1])
    assert result.stages[-1].score >= result.target and result.met
    assert [stage.name for stage in result.stages] == list(STAGES[:len(result.stages)])
    assert _agreement(model, result.sim, data) == pytest.approx(result.score)
    assert all(path.stat().st_size > 0 for path in result.export_paths)
    text = result.report_path.read_text()
    assert all(stage.name in text for stage in result.stages)


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_cache(planted, tmp_path):
    model, data = planted
    reference = [model(x).detach() for x in data]
    calls = []

    def score(net):
        calls.append(1)
        if len(calls) == 4:  # float, minmax, then three range schemes: stops inside "range schemes"
            raise KeyboardInterrupt
        with torch.no_grad():
            outputs = [net(x) for x in data]
        return sum(int((r.argmax(1) == o.argmax(1)).sum()) for r, o in zip(reference, outputs)) / 24

    with pytest.raises(KeyboardInterrupt):
        lowbit.autoquant(model, data, eval_fn=score, allowed_drop=0.05, out_dir=tmp_path, adaround_iterations=50)
    result = lowbit.autoquant(model, data, eval_fn=score, allowed_drop=0.05, out_dir=tmp_path,
                              adaround_iterations=50)
    assert [stage.cached for stage in result.stages[:2]] == [True, False]
    assert result.stages[0].seconds == 0.0 and result.met


@pytest.mark.slow
def test_mixed_precision_starts_from_a_sim_fitted_to_no_bitwidth(planted, tmp_path):
    """Even when the AdaRound stage scores best, mixed precision starts from the best range scheme: its
    weights are not frozen on one grid, so raising a layer's bits takes effect."""
    model, data = planted

    def score(net):
        frozen = any(q.frozen for q in net.quantizers().values()) if hasattr(net, "quantizers") else False
        return 0.9 if frozen else _agreement(model, net, data)

    result = lowbit.autoquant(model, data, eval_fn=score, allowed_drop=0.05, out_dir=tmp_path,
                              adaround_iterations=20)
    assert [stage.name for stage in result.stages] == list(STAGES) and result.stages[3].score == 0.9
    assert result.met and not any(q.frozen for q in result.sim.quantizers().values())
    assert _agreement(model, result.sim, data) == pytest.approx(result.score)


def test_an_onnx_model_runs_through_the_same_stages(planted, tmp_path):
    """The planted model's ONNX export: the reported score is recomputed from the exported QDQ file in
    onnxruntime against torch's float outputs."""
    model, data = planted
    path = tmp_path / "small.onnx"
    torch.onnx.export(model, (data[0][:1],), str(path), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}})
    result = lowbit.autoquant(str(path), data, allowed_drop=0.05, out_dir=tmp_path / "aq", adaround_iterations=20)
    assert result.float_score == 1.0 and result.met
    assert [stage.name for stage in result.stages] == list(STAGES[:len(result.stages)])
    assert all(stage.score < result.target for stage in result.stages[:-1])
    runtime = session(result.export_paths.qdq_onnx)
    with torch.no_grad():
        same = sum(int((runtime.run(None, {"image": x.numpy()})[0].argmax(1) == model(x).argmax(1).numpy()).sum())
                   for x in data)
    assert same / 24 == pytest.approx(result.score)
