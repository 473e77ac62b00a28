"""AIMET's model compression, for bench_compress's peer row: ``ModelCompressor.compress_model`` on the pretrained
MobileNetV2, spatial SVD then channel pruning (auto mode, greedy per-layer ratio selection, MAC cost), the two stages'
targets splitting the MAC fraction evenly (the pruning target made up from what the SVD stage reached). Data as
bench_compress gives ``lowbit.compress``: the first four batches of 16 fresh crops (bench_qat's ``TrainingCrops``),
two for channel pruning's weight reconstruction, two that the eval callback scores (top-1 agreement with FP32);
evaluation on bench_ptq's 512 images; no fine-tuning (the "before fine-tuning" figures). On the model as given
AIMET's channel pruning stops at the functional ``adaptive_avg_pool2d`` (its winnowing knows no such op: the row
records that); ``--prepare`` runs AIMET's ``prepare_model`` first (which makes it a module) and leaves the first
convolution out of the pruning, as AIMET's next error asks. Each variant is one row of
``bench/results/peers_compress_aimet.json``. Pruning scores a least-squares refit and a winnowed copy per
candidate ratio and layer: fewer ``--candidates`` and ``--eval-images`` shorten a run (docs/compression.md has
the times). Run in AIMET's venv (``bash bench/peers/install_aimet.sh
.venv-peers/aimet``):

    .venv-peers/aimet/bin/python bench/peers/compress_aimet.py --macs 0.75 [--prepare]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common  # noqa: E402
from bench_qat import EVALUATION_IMAGES, N_LABELLED, TrainingCrops, figures  # noqa: E402

import aimet_torch  # noqa: E402
import torch  # noqa: E402
from aimet_torch.common.defs import CompressionScheme, CostMetric, GreedySelectionParameters  # noqa: E402
from aimet_torch.common.utils import AimetLogger  # noqa: E402
from aimet_torch.compress import ModelCompressor  # noqa: E402
from aimet_torch.defs import ChannelPruningParameters, SpatialSvdParameters  # noqa: E402
from aimet_torch.model_preparer import prepare_model  # noqa: E402

from lowbit.compression.costs import model_costs  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402

INPUT_SHAPE = (1, 3, 224, 224)
SAMPLES_PER_IMAGE = 10
"""AIMET's channel pruning samples this many positions of each image for its reconstruction (hard-coded there)."""


def agreement_callback(batches: list[torch.Tensor], model: torch.nn.Module):
    """AIMET's eval callback ``(model, iterations, use_cuda) -> score``: top-1 agreement with ``model`` (FP32)."""
    with torch.no_grad():
        reference = torch.cat([model(b) for b in batches]).argmax(1)

    def evaluate(candidate, _iterations=None, use_cuda=False):  # noqa: ARG001  (AIMET's signature)
        candidate.eval()
        with torch.no_grad():
            outputs = torch.cat([candidate(b) for b in batches])
        return float((outputs.argmax(1) == reference).float().mean())

    return evaluate


def svd_parameters(target: float, candidates: int):
    greedy = GreedySelectionParameters(target_comp_ratio=Decimal(target), num_comp_ratio_candidates=candidates)
    return SpatialSvdParameters(SpatialSvdParameters.Mode.auto, SpatialSvdParameters.AutoModeParams(greedy))


def pruning_parameters(target: float, candidates: int, fit: list[torch.Tensor], ignore=()):
    images = torch.cat(fit)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(len(images))),
                                         batch_size=len(fit[0]))
    greedy = GreedySelectionParameters(target_comp_ratio=Decimal(target), num_comp_ratio_candidates=candidates)
    return ChannelPruningParameters(loader, SAMPLES_PER_IMAGE * len(images), allow_custom_downsample_ops=False,
                                    mode=ChannelPruningParameters.Mode.auto,
                                    params=ChannelPruningParameters.AutoModeParams(greedy, list(ignore)))


def stage(model, scheme, parameters, evaluate) -> dict:
    """One ``compress_model`` call in a scratch folder (AIMET pickles its eval scores under ./data); returns the
    compressed model, AIMET's per-layer ratios and MAC ratio, or the error."""
    start, cwd = time.perf_counter(), os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            compressed, stats = ModelCompressor.compress_model(model, evaluate, 2, INPUT_SHAPE,
                                                               scheme, CostMetric.mac, parameters)
        except Exception as error:  # noqa: BLE001  (AIMET's failure is the row's outcome)
            return {"model": None, "error": f"{type(error).__name__}: {error}", "seconds": time.perf_counter() - start,
                    "traceback": traceback.format_exc().splitlines()[-12:]}
        finally:
            os.chdir(cwd)
    scores = stats.compression_ratio_selection_stats.eval_scores_dictionary
    return {"model": compressed.eval(), "seconds": time.perf_counter() - start,
            "aimet_mac_ratio": float(stats.mac_compression_ratio),
            "layers_scored": sorted(scores), "ratios": {s.name: None if s.compression_ratio is None
                                                        else float(s.compression_ratio) for s in stats.per_layer_stats},
            "callback_score": float(stats.compressed_model_accuracy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--macs", type=float, default=0.75, help="fraction of the MACs to keep")
    parser.add_argument("--candidates", type=int, default=10, help="AIMET's num_comp_ratio_candidates per layer")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-images", type=int, default=EVALUATION_IMAGES, help="fewer for a quick run")
    parser.add_argument("--threads", type=int, default=_common.THREADS)
    parser.add_argument("--prepare", action="store_true", help="AIMET's prepare_model first, first conv not pruned")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    AimetLogger.set_level_for_all_areas(logging.WARNING)
    evals, _ = _common.evaluation_batches(n_augmented=EVALUATION_IMAGES - N_LABELLED)
    evals = list(torch.cat(evals)[:args.eval_images].split(32))
    model = pretrained_mobilenet_v2().eval()
    with torch.no_grad():
        fp32 = torch.cat([model(b) for b in evals])
    given = prepare_model(model) if args.prepare else copy.deepcopy(model)
    batches = list(TrainingCrops(4, args.batch))
    fit, scoring = batches[:2], batches[2:]
    evaluate = agreement_callback(scoring, model)
    example = fit[0][:1]
    base = model_costs(model, example)
    start = time.perf_counter()
    svd_target = math.sqrt(args.macs)
    stages = {"spatial_svd": stage(given, CompressionScheme.spatial_svd, svd_parameters(svd_target, args.candidates),
                                   evaluate)}
    current, outcome = stages["spatial_svd"]["model"], None
    if current is None:
        outcome = f"spatial SVD failed: {stages['spatial_svd']['error']}"
    else:
        pruning_target = args.macs * base.macs / model_costs(current, example).macs
        first = [next(m for m in current.modules() if isinstance(m, torch.nn.Conv2d))] if args.prepare else []
        stages["channel_pruning"] = stage(current, CompressionScheme.channel_pruning,
                                          pruning_parameters(pruning_target, args.candidates, fit, first), evaluate)
        stages["channel_pruning"]["target"] = pruning_target
        if stages["channel_pruning"]["model"] is None:
            outcome = f"channel pruning failed: {stages['channel_pruning']['error']} (row: spatial SVD alone)"
        else:
            current = stages["channel_pruning"]["model"]
    stages["spatial_svd"]["target"] = svd_target
    seconds = time.perf_counter() - start
    row = {"tool": f"aimet-torch {aimet_torch.__version__}", "model": "mobilenet_v2", "macs_fraction": args.macs,
           "prepare_model": args.prepare, "candidates": args.candidates, "batch": args.batch,
           "evaluation_images": len(fp32), "threads": args.threads, "outcome": outcome, "seconds": seconds, "steps": 0}
    if current is not None:
        after = model_costs(current, example)
        with torch.no_grad():
            before = figures(torch.cat([current(b) for b in evals]), fp32)
        row.update(macs=[base.macs, after.macs], params=[base.params, after.params], before=before)
    row["stages"] = {name: {k: v for k, v in s.items() if k != "model"} for name, s in stages.items()}
    row["machine"] = _common.machine_info()
    prepared = ", prepare_model" if args.prepare else ""
    label = f"{row['tool']} mobilenet_v2 at {args.macs:.0%} MACs (SSVD → CP, {args.candidates} candidates{prepared})"
    path = _common.RESULTS / "peers_compress_aimet.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else {}
    rows[label] = row
    _common.write_results("peers_compress_aimet", {"evaluation_images": EVALUATION_IMAGES, "rows": rows})
    print("| model (recipe) | MACs | params | agreement before fine-tuning | mean KL | compress s | outcome |")
    if current is None:
        print(f"| {label} | – | – | – | – | {seconds:.0f} | {outcome} |")
    else:
        (m0, m1), (p0, p1) = row["macs"], row["params"]
        print(f"| {label} | {m1 / m0:.0%} | {p1 / p0:.0%} | {before['top1_agreement']:.1%} | "
              f"{before['mean_kl']:.4f} | {seconds:.0f} | {outcome or 'ok'} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
