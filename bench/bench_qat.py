"""Quantization-aware training on the real MobileNetV2 and EfficientNet-Lite0: agreement with FP32 before
(calibrated min-max) and after ``lowbit.qat``, the cost of a QAT step against a float training step of the
same model and batch, peak memory against float training, and the sim↔onnxruntime fidelity after training.

Training data: fresh augmented crops of scikit-image's photos every epoch (distillation: no labels).
Evaluation: the 20 labelled ImageNet photos plus 492 crops of them, as bench_ptq (512 images).

    .venv/bin/python bench/bench_qat.py                                     # every row, default recipe
    .venv/bin/python bench/bench_qat.py --rows mobilenet_v2-w4a8 --steps 200 --batch 16
    .venv/bin/python bench/bench_qat.py --rows mobilenet_v2-w4a8 --start seqmse --keep-batchnorm --no-cost
    .venv/bin/python bench/bench_qat.py --rows mobilenet_v2-w4a4 --start seqmse --scheme sqnr --steps 300 --batch 16
    .venv/bin/python bench/bench_qat.py --rows mobilenet_v2-w4a8,efficientnet_lite0-w4a8 --batch 16 --cost-only
    .venv/bin/python bench/bench_qat.py --rows mobilenet_v2-w8a8 --start adaround --fixed-ranges --keep-best --no-cost
    .venv/bin/python bench/bench_qat.py --rows mobilenet_v2-w8a8 --ptq-start w8a8-adaround --fixed-ranges --keep-best

``--ptq-start ROW`` starts from the sim bench_ptq.py builds for ROW (its techniques, AdaRound by layer or by block at
its iterations, ``--seed``), so a row can start from the best post-training result that bench reports.

With ``--keep-best`` the trace's images (every eighth) choose the state kept; every row also reports its agreement on
the other 448 images, which no choice saw.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_ptq  # noqa: E402

import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.algorithms.adaround_rows import DEFAULT_ITERATIONS  # noqa: E402
from lowbit.quant.range_estimators import SCHEMES  # noqa: E402
from lowbit.training.qat import train_exactly  # noqa: E402
from lowbit.zoo import augmented, calibration_photos, photos_to_batch  # noqa: E402
from lowbit.zoo import pretrained_efficientnet_lite0, pretrained_mobilenet_v2  # noqa: E402

MODELS = {"mobilenet_v2": pretrained_mobilenet_v2, "efficientnet_lite0": pretrained_efficientnet_lite0}
SETTINGS = {"w8a8": ("default", None), "w4a8": ("w4a8", None), "w4a4": ("w4a8", 4)}
"""Setting → (target preset, activation bits override)."""
N_LABELLED = 20
EVALUATION_IMAGES = 512
TRACE_STRIDE = 8
"""Every eighth evaluation image is in the trace: scored every tenth of the run, and keep_best's choice."""


class TrainingCrops:
    """``batches`` batches of ``batch`` fresh random crops of the calibration photos on every pass; with ``mixup``
    each image blends two crops, λ·a + (1 − λ)·b with λ uniform (function matching, Beyer et al. 2022)."""

    def __init__(self, batches: int, batch: int, mixup: bool = False):
        self.batches, self.batch, self.mixup, self.passes = batches, batch, mixup, 0
        self.photos = [image for image, _ in calibration_photos()]

    def __len__(self) -> int:
        return self.batches

    def __iter__(self):
        self.passes += 1
        for index in range(self.batches):
            seed = 10_000 * self.passes + index
            crops = photos_to_batch(augmented(self.photos, self.batch, seed=seed))
            if self.mixup:
                generator = torch.Generator().manual_seed(seed)
                others = crops[torch.randperm(self.batch, generator=generator)]
                weights = torch.rand(self.batch, 1, 1, 1, generator=generator)
                crops = weights * crops + (1 - weights) * others
            yield crops


def split_trace(evals: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """(the trace's batches, the other images' batches, a mask of the traced images): a strided sample, labelled
    photos and crops alike."""
    images, batch = torch.cat(evals), evals[0].shape[0]
    traced = torch.arange(len(images)) % TRACE_STRIDE == 0
    return list(images[traced].split(batch)), list(images[~traced].split(batch)), traced


def figures(outputs: torch.Tensor, fp32: torch.Tensor) -> dict:
    """Top-1 agreement and mean KL(FP32 ‖ quantized)."""
    log_p, log_q = fp32.log_softmax(1), outputs.log_softmax(1)
    return {"top1_agreement": float((outputs.argmax(1) == fp32.argmax(1)).float().mean()),
            "mean_kl": float((log_p.exp() * (log_p - log_q)).sum(1).mean())}


START_TECHNIQUES = {"minmax": (), "seqmse": ("sequential_mse",), "adaround": ("sequential_mse", "adaround")}
"""--start → the post-training techniques whose encodings QAT starts from."""


def sim_for(model, calib, setting: str, start: str = "minmax", keep_batchnorm: bool = False, scheme: str = "minmax"):
    target, act_bits = SETTINGS[setting]
    return lowbit.quantize(model, calib, target=target, act_bits=act_bits, techniques=START_TECHNIQUES[start],
                           fold_batchnorm=not keep_batchnorm, scheme=scheme)


def step_seconds(model_name: str, setting: str, batch: int, keep_batchnorm: bool, fixed_ranges: bool,
                 repeats: int = 10) -> dict:
    """Seconds per training step (forward, backward, Adam) of the float model and of its QAT sim, alternated."""
    model = MODELS[model_name]().eval()
    calib = _common.calibration_batches(n_images=2 * batch, batch=batch)
    sim = sim_for(model, calib, setting, keep_batchnorm=keep_batchnorm).learn_ranges(not fixed_ranges)
    train_exactly(sim, False)  # as lowbit.qat trains by default
    return step_cost(MODELS[model_name]().train(), sim, calib[0], repeats)


def step_cost(float_model, qat_model, images: torch.Tensor, repeats: int = 10) -> dict:
    """Median seconds of a training step (forward, backward, Adam) of each model, the two alternated."""
    steppers = {}
    for name, module in (("float", float_model), ("qat", qat_model)):
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-6)
        module.train()

        def step(module=module, optimizer=optimizer):
            loss = module(images).logsumexp(1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        steppers[name] = step
    times = _common.alternated_times(steppers, repeats)
    median = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    return {"float_step_seconds": median["float"], "qat_step_seconds": median["qat"],
            "qat_over_float": median["qat"] / median["float"], "step_seconds": times}


def peak_rss(model_name: str, setting: str, kind: str, batch: int) -> float:
    """Peak resident memory (MiB, VmHWM) of a fresh process that loads the model and runs three training steps
    of ``kind`` ("float", or "qat": the sim built and calibrated on one batch first)."""
    out = subprocess.run([sys.executable, __file__, "--memory-probe", f"{model_name},{setting},{kind},{batch}"],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def memory_probe(spec: str) -> None:
    model_name, setting, kind, batch = spec.split(",")
    _common.setup_threads()
    model = MODELS[model_name]().eval()
    calib = _common.calibration_batches(n_images=int(batch), batch=int(batch))
    module = model
    if kind.startswith("qat"):
        module = sim_for(model, calib, setting).learn_ranges(kind == "qat")
        train_exactly(module, False)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-6)
    for _ in range(3):
        loss = module(calib[0]).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    status = Path("/proc/self/status").read_text()  # VmHWM: this process's peak; ru_maxrss keeps the parent's
    print(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024)


def run_row(model_name: str, setting: str, args, evals, fp32s) -> dict:
    model = MODELS[model_name]().eval()
    fp32 = fp32s[model_name]
    calib = _common.calibration_batches(n_images=256)
    if args.ptq_start:
        target, techniques, scheme = bench_ptq.ROWS[args.ptq_start]
        sim = bench_ptq.build(model, calib, target, techniques, scheme, DEFAULT_ITERATIONS, args.seed)[0]
    else:
        sim = sim_for(model, calib, setting, args.start, args.keep_batchnorm, args.scheme)
    with torch.no_grad():
        before_outputs = torch.cat([sim(b) for b in evals])
    before = figures(before_outputs, fp32)
    data = TrainingCrops(args.batches_per_epoch, args.batch, args.mixup)
    trace, _, traced = split_trace(evals)
    result = lowbit.qat(sim, data, steps=args.steps, lr=args.lr, range_learning=not args.fixed_ranges,
                        eval_data=trace, keep_best=args.keep_best)
    with torch.no_grad():
        outputs = torch.cat([sim(b) for b in evals])
    after = figures(outputs, fp32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = sim.export(tmp, model_name, verify=evals)
    row = {"model": model_name, "setting": setting, "steps": args.steps, "batch": args.batch, "lr": args.lr,
           "start": start_name(args), "scheme": args.scheme, "mixup": args.mixup,
           "range_learning": not args.fixed_ranges,
           "batchnorm": "kept, folded after" if args.keep_batchnorm else "folded before",
           "before": before, "after": after, "qat_seconds": result.seconds, "result": str(result),
           "before_untraced": figures(before_outputs[~traced], fp32[~traced]),
           "after_untraced": figures(outputs[~traced], fp32[~traced]), "kept_step": result.kept_step,
           "trace": [[step, score] for step, score in result.scores()],
           "fidelity": {"top1_agreement": paths.fidelity.top1_agreement,
                        "max_error_lsb": paths.fidelity.max_error_lsb}}
    if not args.no_cost:
        row.update(cost_row(model_name, setting, args))
    return row


def start_name(args) -> str:
    return f"bench_ptq {args.ptq_start}, seed {args.seed}" if args.ptq_start else args.start


def cost_row(model_name: str, setting: str, args) -> dict:
    """Step seconds of QAT and float training, alternated, and each one's peak memory in a fresh process."""
    row = step_seconds(model_name, setting, args.batch, args.keep_batchnorm, args.fixed_ranges)
    qat = "qat-fixed" if args.fixed_ranges else "qat"
    row["peak_rss_mib"] = {kind: peak_rss(model_name, setting, probe, args.batch)
                           for kind, probe in (("float", "float"), ("qat", qat))}
    return row


def stored_payload() -> dict:
    """bench_qat.json's rows and step costs so far (without the machine, which the next write records)."""
    path = _common.RESULTS / "bench_qat.json"
    payload = json.loads(path.read_text()) if path.exists() else {"evaluation_images": EVALUATION_IMAGES, "rows": {}}
    payload.pop("machine", None)
    return payload


def print_costs(rows, args) -> None:
    """The step-cost table alone (``--cost-only``), kept in the JSON under "step_cost"."""
    payload = stored_payload()
    table = []
    for model_name, setting in rows:
        key = (f"{model_name}-{setting} (batch {args.batch}" + (", BN kept" if args.keep_batchnorm else "")
               + (", fixed ranges)" if args.fixed_ranges else ")"))
        cost = payload.setdefault("step_cost", {})[key] = cost_row(model_name, setting, args)
        rss = cost["peak_rss_mib"]
        table.append([key, f"{cost['float_step_seconds']:.3f}", f"{cost['qat_step_seconds']:.3f}",
                      f"{cost['qat_over_float']:.2f}", f"{rss['float']:.0f}", f"{rss['qat']:.0f}",
                      f"{rss['qat'] / rss['float']:.2f}"])
    _common.write_results("bench_qat", payload)
    _common.print_table(["model-setting", "float step s", "QAT step s", "QAT / float", "float peak MiB",
                         "QAT peak MiB", "QAT / float"], table)


def markdown_row(key: str, r: dict) -> list:
    rss = r.get("peak_rss_mib")
    return [key, f"{r['steps']} × {r['batch']}", f"{r['before']['top1_agreement']:.1%}",
            f"{r['after']['top1_agreement']:.1%}", f"{r['before']['mean_kl']:.4f}", f"{r['after']['mean_kl']:.4f}",
            f"{r['qat_over_float']:.2f}" if "qat_over_float" in r else "–",
            f"{rss['qat'] / rss['float']:.2f}" if rss else "–",
            f"{r['fidelity']['top1_agreement']:.1%}, {r['fidelity']['max_error_lsb']:.1f} LSB",
            f"{r['qat_seconds']:.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(f"{m}-{s}" for m in MODELS for s in SETTINGS),
                        help="comma-separated MODEL-SETTING rows")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches-per-epoch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--start", choices=sorted(START_TECHNIQUES), default="minmax",
                        help="the encodings QAT starts from: calibrated min-max, sequential MSE's, or sequential MSE's "
                             "then AdaRound's (by block)")
    parser.add_argument("--ptq-start", choices=sorted(r for r in bench_ptq.ROWS if r != "w8-weight-only"),
                        help="start from this bench_ptq.py row's sim, built as that bench builds it")
    parser.add_argument("--seed", type=int, default=0, help="AdaRound's seed with --ptq-start")
    parser.add_argument("--scheme", choices=SCHEMES, default="minmax",
                        help="calibration scheme of the starting ranges")
    parser.add_argument("--keep-batchnorm", action="store_true",
                        help="train BatchNorm on batch statistics, folded into weights and scales after")
    parser.add_argument("--mixup", action="store_true", help="train on blends of two crops (function matching)")
    parser.add_argument("--fixed-ranges", action="store_true", help="train the weights only (range_learning=False)")
    parser.add_argument("--keep-best", action="store_true",
                        help="keep the state that scored best on the trace's images (qat's keep_best)")
    parser.add_argument("--no-cost", action="store_true", help="skip the step-cost and memory probes")
    parser.add_argument("--cost-only", action="store_true", help="only the step-cost and memory probes")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return
    rows = [row.rsplit("-", 1) for row in args.rows.split(",")]
    unknown = [m + "-" + s for m, s in rows if m not in MODELS or s not in SETTINGS]
    if unknown:
        parser.error(f"unknown row {unknown[0]}")
    if args.ptq_start and (args.keep_batchnorm or args.scheme != "minmax" or any(
            SETTINGS[s] != (bench_ptq.ROWS[args.ptq_start][0], None) for _, s in rows)):
        parser.error(f"--ptq-start {args.ptq_start} builds a sim of target preset "
                     f"{bench_ptq.ROWS[args.ptq_start][0]!r}: give rows "
                     "of that setting, without --keep-batchnorm or --scheme")
    _common.setup_threads()
    if args.cost_only:
        print_costs(rows, args)
        return
    evals, _ = _common.evaluation_batches(n_augmented=EVALUATION_IMAGES - N_LABELLED)
    fp32s = {}
    for model_name in {m for m, _ in rows}:
        with torch.no_grad():
            model = MODELS[model_name]().eval()
            fp32s[model_name] = torch.cat([model(b) for b in evals])
    payload = stored_payload()
    results = payload["rows"]
    for model_name, setting in rows:
        recipe = (f"from {start_name(args)}" + (f", {args.scheme} ranges" if args.scheme != "minmax" else "")
                  + (", BN kept" if args.keep_batchnorm else "") + (", mixup" if args.mixup else "")
                  + (", fixed ranges" if args.fixed_ranges else "") + (", keep best" if args.keep_best else ""))
        key = f"{model_name}-{setting} ({args.steps} steps × {args.batch}, lr {args.lr:g}, {recipe})"
        start = time.perf_counter()
        results[key] = run_row(model_name, setting, args, evals, fp32s)
        row = results[key]
        print(f"{key}: {row['before']['top1_agreement']:.1%} → {row['after']['top1_agreement']:.1%} (images the trace "
              f"did not score: {row['before_untraced']['top1_agreement']:.1%} → "
              f"{row['after_untraced']['top1_agreement']:.1%}, kept step {row['kept_step']}) | {row['result']} | "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        _common.write_results("bench_qat", payload)
    print()
    _common.print_table(["model-setting (recipe)", "steps × batch", "agreement before", "after", "KL before",
                         "KL after", "QAT step / float step", "peak RSS QAT / float", "sim↔onnxruntime after",
                         "QAT s"], [markdown_row(k, r) for k, r in results.items()])
    print(f"\nwrote {_common.RESULTS / 'bench_qat.json'}")


if __name__ == "__main__":
    main()
