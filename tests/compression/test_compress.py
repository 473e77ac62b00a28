"""lowbit.compress: the per-layer ratios chosen at equal loss meet the MAC target (counted again on the result),
the input model is untouched, fine-tuning lowers the distillation loss, the report shows each layer's curve, and
bad requests are one line; the pretrained MobileNetV2 compresses through its depthwise chains."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit.compression import model_costs
from lowbit.compression.compress import Candidate, _choose, _fitting_and_scoring
from lowbit.errors import DataError, SpecError
from lowbit.training.loop import distillation_loss


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(64, 32, 1), nn.BatchNorm2d(32))
        self.conv = nn.Sequential(nn.Conv2d(32, 48, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        x = self.conv(self.project(self.depthwise(self.expand(self.stem(x)))))
        return self.head(x.mean((2, 3)))


def _setting():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model, data = Net().eval(), [torch.randn(8, 3, 16, 16, generator=generator) for _ in range(4)]
    lowbit.reestimate_batchnorm(model, data)  # statistics of the data, as a trained network has
    return model, data


def _negative_loss(model, reference, data):
    with torch.no_grad():
        return lambda candidate: -float(sum(distillation_loss(candidate(x), reference(x)) for x in data))


def test_compress_meets_the_mac_target_and_leaves_the_model_alone(tmp_path):
    model, data = _setting()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = lowbit.compress(model, data, macs=0.5, fine_tune_steps=0, out_dir=tmp_path)
    before, after = model_costs(model, data[0]), model_costs(result.model, data[0])
    assert result.macs == (before.macs, after.macs) and after.macs <= 0.505 * before.macs
    assert result.params == (before.params, after.params) and after.params < before.params
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    for name, (method, kept, full) in result.ratios.items():
        assert kept < full and (full < 32 or kept % 16 == 0), (name, kept, full)  # blocked kernels' channel counts
        if method == "channel_pruning":
            assert result.model.get_submodule(name).weight.shape[1] == kept
        else:
            assert result.model.get_submodule(name)[0].out_channels == kept  # the rank between the two factors
    assert set(result.skipped) == {"stem.0", "depthwise.0"}  # the head's inputs prune through the spatial mean
    assert "3 input channels make a k×1 layer too thin" in result.skipped["stem.0"]
    html = result.report_path.read_text()
    assert all(name in html for name in result.ratios) and html.count("<svg") == len(result.curves)


def test_fine_tuning_lowers_the_distillation_loss():
    model, data = _setting()
    score = _negative_loss(model, model, data)
    result = lowbit.compress(model, data, macs=0.6, fine_tune_steps=30, lr=1e-4, eval_fn=score, out_dir=None)
    assert result.score[1] > result.score[0], result.score


def test_keep_best_returns_the_compressed_model_when_fine_tuning_spoils_it():
    """At a learning rate that wrecks the weights, keep_best gives back the model as compressed (step 0)."""
    model, data = _setting()
    held_out = [torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(2))]
    options = dict(macs=0.6, eval_data=held_out, out_dir=None)
    plain = lowbit.compress(model, data, fine_tune_steps=0, **options)
    spoiled = lowbit.compress(model, data, fine_tune_steps=10, lr=1.0, **options)
    kept = lowbit.compress(model, data, fine_tune_steps=10, lr=1.0, keep_best=True, **options)
    assert spoiled.score[1] < plain.score[0] - 0.2 and spoiled.kept_step is None
    assert kept.kept_step == 0 and kept.score == (plain.score[0], plain.score[0])
    with torch.no_grad():
        assert torch.equal(kept.model(held_out[0]), plain.model(held_out[0]))


@pytest.mark.slow
def test_fine_tuning_trains_the_weights_and_keeps_batchnorm_statistics():
    """Batches of a few images would replace the statistics the refit layers were fitted to: they stay as selected."""
    model, data = _setting()
    untrained, tuned = (lowbit.compress(model, data, macs=0.6, fine_tune_steps=steps, lr=1e-3, out_dir=None).model
                        for steps in (0, 10))
    assert untrained.state_dict().keys() == tuned.state_dict().keys()
    for key, value in untrained.state_dict().items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(value, tuned.state_dict()[key]), key
    assert all(not torch.equal(p, q) for p, q in zip(untrained.parameters(), tuned.parameters()))


def test_equal_loss_selection_by_hand():
    a = [Candidate("channel_pruning", 0.5, 2, 4, 100, 0.1), Candidate("channel_pruning", 0.25, 1, 4, 150, 0.5)]
    b = [Candidate("weight_svd", 0.5, 4, 8, 60, 0.2), Candidate("spatial_svd", 0.25, 2, 8, 90, 0.3)]
    curves = {"a": a, "b": b}
    # saving 150: at loss 0.2 a saves 100 and b 60 (160 ≥ 150); at 0.1 only a's 100
    assert _choose(curves, 150) == {"a": a[0], "b": b[0]}
    assert _choose(curves, 100) == {"a": a[0]}
    assert _choose(curves, 190) == {"a": a[0], "b": b[1]}  # at 0.3 b's spatial SVD saves more
    assert _choose(curves, 240) == {"a": a[1], "b": b[1]}
    assert _choose(curves, 241) is None


def test_bad_requests_are_one_line():
    model, data = _setting()
    with pytest.raises(SpecError, match="macs is the fraction"):
        lowbit.compress(model, data, macs=1.5, out_dir=None)
    with pytest.raises(SpecError, match="methods are some of"):
        lowbit.compress(model, data, methods=("pruning",), out_dir=None)
    with pytest.raises(SpecError, match="exclude names no layer of the model: trunk"):
        lowbit.compress(model, data, exclude=("trunk",), out_dir=None)
    with pytest.raises(DataError, match="the data gave 1 batch, give at least 2"):
        lowbit.compress(model, data[:1], out_dir=None)
    with pytest.raises(SpecError, match="refit_batches is how many batches"):
        lowbit.compress(model, data, refit_batches=0, out_dir=None)
    with pytest.raises(SpecError, match="keep_best keeps the fine-tuned state that scores best on eval_data"):
        lowbit.compress(model, data, keep_best=True, out_dir=None)
    with pytest.raises(SpecError, match="5% of the MACs is out of reach"):
        lowbit.compress(model, data, macs=0.05, methods=("weight_svd",), fine_tune_steps=0, out_dir=None)


def test_chosen_layers_refit_on_more_batches_than_candidates_never_on_the_scored_ones():
    batches = [torch.full((2, 3, 4, 4), float(i)) for i in range(7)]
    values = lambda items: [int(b.flatten()[0]) for b in items]  # noqa: E731
    fitting, scoring, refit = _fitting_and_scoring(batches, num_batches=2, refit_batches=4)
    assert values(fitting) == [0, 1] and values(args[0] for args, _ in scoring) == [2, 3] and values(refit) == [0, 1, 4, 5]
    fitting, scoring, refit = _fitting_and_scoring(batches[:3], num_batches=2, refit_batches=8)
    assert values(fitting) == [0, 1] and values(args[0] for args, _ in scoring) == [2] and values(refit) == [0, 1]
    _, _, refit = _fitting_and_scoring(batches, num_batches=1, refit_batches=8)
    assert values(refit) == [0, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_pretrained_mobilenet_compresses_to_three_quarters(mobilenet, calibration_batches, eval_batches, tmp_path):
    """Refit on 8 crops, scored on 8 others; its agreement on the 100 held-out images is far above chance."""
    data = [calibration_batches[0][:8], calibration_batches[0][8:]]
    result = lowbit.compress(mobilenet, data, macs=0.75, fine_tune_steps=0, num_batches=1, out_dir=tmp_path)
    assert result.macs[1] <= 0.7575 * result.macs[0]
    assert result.macs[1] == model_costs(result.model, data[0]).macs
    assert sum(method == "channel_pruning" for method, _, _ in result.ratios.values()) >= 5
    with torch.no_grad():
        scored = float((result.model(data[1]).argmax(1) == mobilenet(data[1]).argmax(1)).float().mean())
        held_out = float(torch.cat([result.model(x).argmax(1) == mobilenet(x).argmax(1) for x in eval_batches])
                         .float().mean())
    assert result.score[0] == pytest.approx(scored) and held_out >= 0.4, held_out


def test_the_compressed_model_quantizes_and_exports_as_simulated(tmp_path):
    model, data = _setting()
    result = lowbit.compress(model, data, macs=0.5, fine_tune_steps=0, out_dir=None)
    sim = lowbit.quantize(result.model, data)
    lowbit.qat(sim, data, steps=2, lr=1e-4)
    paths = sim.export(tmp_path, verify=data)
    assert paths.fidelity.max_error_lsb <= 1.0 and paths.fidelity.top1_agreement == 1.0, paths.fidelity.row()
