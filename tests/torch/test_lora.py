"""LoRA adapters (peft) on the real MobileNetV2: the sim runs what onnxruntime runs, adapters switch without touching
the base's encodings, an adapter's calibration is the one a fresh sim computes, peft's saved adapters load, each
adapter exports small, QAT trains only the adapter; bad input is one line."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from lowbit.errors import InputError, NotCalibratedError, SpecError
from lowbit.torch.adapters import adapter_keys

peft = pytest.importorskip("peft", reason="LoRA needs the lora extra: pip install 'lowbit[lora]'")

ADAPTED = ["features.16.conv.0.0", "features.16.conv.2", "features.17.conv.2", "features.18.0", "classifier.1"]


def with_adapter(model, peft_model, name: str, seed: int):
    """Add adapter ``name`` (rank 4 on ADAPTED) with seeded non-zero B, as a trained adapter has."""
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=ADAPTED, lora_dropout=0.0)
    if peft_model is None:
        peft_model = peft.get_peft_model(copy.deepcopy(model), config, adapter_name=name)
    else:
        peft_model.add_adapter(name, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in peft_model.named_parameters():
            if f"lora_B.{name}." in key:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return peft_model.eval()


@pytest.fixture(scope="module")
def two_adapters(mobilenet):
    peft_model = with_adapter(mobilenet, None, "a", seed=1)
    return with_adapter(mobilenet, peft_model, "b", seed=2)


def encodings(sim, keys):
    return {k: sim.quantizers()[k].encoding for k in keys}


def same(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(
        torch.equal(a.scale, b.scale) and torch.equal(a.offset, b.offset) for a, b in
        ((first[k], second[k]) for k in first))


def test_sim_of_a_lora_model_runs_as_onnxruntime(two_adapters, calibration_batches, eval_batches, tmp_path):
    """BatchNorm folds through the adapters (float sim = peft model), and the QDQ export agrees with the sim."""
    sim = lowbit.quantize(two_adapters, calibration_batches)
    assert sim.technique_results[0] == "fold batchnorm: 52 layers"
    assert len(adapter_keys(sim)) == 5 * len(ADAPTED)  # down and up: weight and output; the sum's output
    float_sim = copy.deepcopy(sim)
    for quantizer in float_sim.quantizers().values():
        quantizer.mode = "off"
    with torch.no_grad():
        torch.testing.assert_close(float_sim(eval_batches[0]), two_adapters(eval_batches[0]), atol=1e-4, rtol=1e-4)
    fidelity = sim.export(tmp_path, "base", verify=eval_batches[:2]).fidelity.outputs[0]
    assert fidelity.top1_agreement == 1.0 and fidelity.max_error_lsb <= 1.0


def alone(peft_model, name: str, other: str):
    """A copy of the two-adapter model with adapter ``name`` only."""
    only = copy.deepcopy(peft_model)
    only.set_adapter(name)
    only.delete_adapter(other)
    return only


def test_switching_keeps_the_base_and_matches_a_fresh_calibration(two_adapters, calibration_batches, eval_batches):
    sim = lowbit.quantize(two_adapters, calibration_batches)
    adapter = set(adapter_keys(sim))
    base = encodings(sim, [k for k in sim.quantizers() if k not in adapter])
    with torch.no_grad():
        outputs_a = sim(eval_batches[0])
    calibrated_b = encodings(sim.set_adapter("b"), adapter)
    sim.calibrate_adapter(calibration_batches)
    assert same(encodings(sim, base), base)
    assert same(encodings(sim, adapter), calibrated_b)
    fresh = lowbit.quantize(alone(two_adapters, "b", "a"), calibration_batches)
    assert same(encodings(sim, adapter), encodings(fresh, adapter))
    sim.set_adapter("a")
    with torch.no_grad():
        assert torch.equal(sim(eval_batches[0]), outputs_a)
    sim.load_adapter(peft.get_peft_model_state_dict(two_adapters, adapter_name="b"), "loaded").set_adapter("loaded")
    with pytest.raises(NotCalibratedError):
        sim(eval_batches[0])


def test_calibration_covers_every_adapter(two_adapters, calibration_batches):
    """With several adapters, the base's min-max ranges span each adapter's (a sim calibrated with that adapter
    alone) and each adapter's encodings are that sim's; a one-pass iterator of batches gives the same encodings."""
    sim = lowbit.quantize(two_adapters, calibration_batches)
    once = lowbit.quantize(two_adapters, iter(calibration_batches), example_input=calibration_batches[0])
    assert same(encodings(once, list(sim.quantizers())), encodings(sim, list(sim.quantizers())))
    adapter = set(adapter_keys(sim))
    fresh = {name: lowbit.quantize(alone(two_adapters, name, other), calibration_batches)
             for name, other in (("a", "b"), ("b", "a"))}
    for name, single in fresh.items():
        assert same(encodings(sim.set_adapter(name), adapter), encodings(single, adapter))
    base = [k for k, p in ((p.key, p) for p in sim.points) if k not in adapter and p.role != "weight"]
    moved = 0
    for key in base:
        union, a, b = (s.quantizers()[key].encoding for s in (sim, fresh["a"], fresh["b"]))
        widest = torch.maximum(a.scale, b.scale)
        assert bool((union.scale >= widest).all()), key
        if not (union.offset.any() or a.offset.any() or b.offset.any()):  # [0, max]: the larger maximum's grid
            assert torch.equal(union.scale, widest), key
        moved += not torch.equal(a.scale, b.scale)
    assert moved >= 3


def test_adapter_calibration_resumes_where_the_adapters_begin(two_adapters, calibration_batches):
    """The base's part of an adapter calibration is kept and reused on the same images and base: the encodings are
    those a full calibration computes; other images or a changed base weight run the whole network again."""
    sim = lowbit.quantize(two_adapters, calibration_batches)
    adapter = adapter_keys(sim)
    full_a = encodings(sim, adapter)
    sim.set_adapter("b").calibrate_adapter(calibration_batches)
    kept = sim.adapters.prefix
    assert kept is not None and len(kept.cursors) == len(calibration_batches)
    sim.set_adapter("a").calibrate_adapter(calibration_batches)
    assert sim.adapters.prefix is kept
    assert same(encodings(sim, adapter), full_a)
    uncached = copy.deepcopy(sim)
    assert uncached.adapters.prefix is None
    with torch.no_grad():
        for model in (sim.model, uncached.model):
            model.get_submodule("features.15.conv.2").layer.weight.mul_(1.01)
    for other in (sim, uncached):
        other.calibrate_adapter(calibration_batches[:1])
    assert sim.adapters.prefix is not kept and len(sim.adapters.prefix.cursors) == 1
    assert same(encodings(sim, adapter), encodings(uncached, adapter))


def test_kept_base_part_follows_the_weights_it_depends_on(two_adapters, calibration_batches):
    """On the same images, a changed weight after the adapters begin keeps the base's part (that layer runs again
    anyway); one before them runs it again; either way the encodings are an uncached sim's."""
    sim = lowbit.quantize(two_adapters, calibration_batches[:1])
    adapter = adapter_keys(sim)
    sim.set_adapter("b").calibrate_adapter(calibration_batches[:1])
    for layer, kept_after in (("features.17.conv.0.0", True), ("features.15.conv.2", False)):
        kept, uncached, before = sim.adapters.prefix, copy.deepcopy(sim), encodings(sim, adapter)
        with torch.no_grad():
            for model in (sim.model, uncached.model):
                model.get_submodule(layer).layer.weight.mul_(1.05)
        for other in (sim, uncached):
            other.calibrate_adapter(calibration_batches[:1])
        assert (sim.adapters.prefix is kept) == kept_after, layer
        assert same(encodings(sim, adapter), encodings(uncached, adapter))
        assert not same(encodings(sim, adapter), before), layer


def test_saved_adapters_load_and_export_small(two_adapters, calibration_batches, tmp_path):
    """peft's save_pretrained folder loads as the adapter it saved (scaling and folded BatchNorm applied); each
    adapter's export is a small fraction of the base's."""
    two_adapters.save_pretrained(tmp_path / "saved")
    sim = lowbit.quantize(two_adapters, calibration_batches)
    sim.load_adapter(tmp_path / "saved" / "b", "b_again")
    for path, tensors in sim.adapters.weights["b"].items():
        for name, value in tensors.items():
            torch.testing.assert_close(sim.adapters.weights["b_again"][path][name], value, rtol=1e-6, atol=0)
    base = sim.export(tmp_path / "out", "base")
    sim.set_adapter("b_again").calibrate_adapter(calibration_batches)
    paths = sim.export_adapter(tmp_path / "out")
    assert paths.weights.name == "b_again.safetensors"
    from safetensors.torch import load_file
    assert set(load_file(str(paths.weights))) == {f"{p}.{part}.weight" for p in ADAPTED for part in ("down", "up")}
    assert paths.weights.stat().st_size + paths.encodings.stat().st_size <= 0.05 * base.onnx.stat().st_size


def test_qat_trains_only_the_adapter(two_adapters, calibration_batches):
    sim = lowbit.quantize(two_adapters, calibration_batches)
    adapter = set(adapter_keys(sim))
    base = encodings(sim, [k for k in sim.quantizers() if k not in adapter])
    before = {k: v.clone() for k, v in sim.model.state_dict().items()}
    lowbit.qat(sim, calibration_batches, steps=2, lr=1e-3)
    after = sim.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    def adapters(k):  # its layers' weights (with their weight quantizers) and its activation quantizers' ranges
        return ".down." in k or ".up." in k or any(k.startswith(f"activation_quantizers.{a}.") for a in adapter)
    assert any(".up.weight" in k for k in changed) and any("_up.scale" in k for k in changed)
    assert all(adapters(k) for k in changed), sorted(k for k in changed if not adapters(k))[:5]
    assert same(encodings(sim, base), base)


def test_bad_adapters_are_one_line(two_adapters, calibration_batches, mobilenet, tmp_path):
    sim = lowbit.quantize(two_adapters, calibration_batches[:1])
    with pytest.raises(InputError, match="no adapter named 'c'; the sim has a, b"):
        sim.set_adapter("c")
    wrong_rank = peft.get_peft_model(copy.deepcopy(mobilenet), peft.LoraConfig(r=8, target_modules=ADAPTED))
    with pytest.raises(SpecError, match=r"has shape \(8, .*the sim's adapters \(4, "):
        sim.load_adapter(peft.get_peft_model_state_dict(wrong_rank), "wide")
    other_layers = peft.get_peft_model(copy.deepcopy(mobilenet), peft.LoraConfig(r=4, target_modules=ADAPTED[:2]))
    with pytest.raises(SpecError, match="does not adapt"):
        sim.load_adapter(peft.get_peft_model_state_dict(other_layers), "partial")
    sim.load_adapter(peft.get_peft_model_state_dict(two_adapters, adapter_name="b"), "loaded")
    with pytest.raises(NotCalibratedError, match="has no encodings"):
        sim.export_adapter(tmp_path, "loaded")
    with pytest.raises(SpecError, match="no LoRA adapters"):
        lowbit.quantize(mobilenet, calibration_batches[:1]).set_adapter("a")
    assert not list(tmp_path.iterdir())


class Branching(torch.nn.Module):
    """A model torch.fx cannot trace (a branch on the data): the sim falls back to leaf modules."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_adapters_of_an_untraceable_model_are_one_line():
    model = peft.get_peft_model(Branching(), peft.LoraConfig(r=2, target_modules=["fc"])).eval()
    data = [torch.rand(4, 8)]
    with pytest.warns(UserWarning, match="leaf modules"):
        sim = lowbit.QuantSim(model, data[0]).calibrate(data)
    with pytest.raises(SpecError, match="torch.fx could not trace the model .*LoRA adapters need a traceable model"):
        sim.set_adapter("default")


def test_peft_older_than_supported_is_one_line():
    from lowbit.torch.lora import check_peft_version
    with pytest.raises(SpecError, match=r"peft 0\.9\.2 is not supported.*lowbit\[lora\]"):
        check_peft_version("0.9.2")
    check_peft_version("0.10.0")
    check_peft_version(peft.__version__)
