"""docs/benchmarks.md and its plots, generated from bench/results/peers_*.json (never edited by hand).

    .venv/bin/python bench/peers/report.py      # rewrite the page from the last results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
import _common  # noqa: E402

STEP_NAMES = {"sim creation": "sim", "calibration": "calib", "calibration + quantize": "calib+quantize",
              "sequential mse": "seq-MSE", "adaround": "AdaRound", "pre-process": "pre-process"}
HEADER = ["tool", "setting", "top-1 agr. (onnxruntime)", "top-1 agr. (sim)", "top-5 agr.", "mean KL",
          "labelled top-1", "steps (s)", "total s", "peak RSS MB", "int8 speed-up b1 / b32", "sim↔ORT top-1"]


def _accuracy(result: dict) -> dict:
    """The figures of what runs: the exported model in onnxruntime where there is one, else the sim."""
    return result.get("onnxruntime") or result["sim"]


def row_line(model: str, result: dict) -> str:
    """One progress line for the console."""
    if "error" in result:
        return f"{model} | {result['tool']} {result['setting']} | FAILED: {result['error'].splitlines()[-1]}"
    acc = _accuracy(result)
    return (f"{model} | {result['tool']} {result['setting']} | top-1 agreement {acc['top1_agreement']:.1%} | "
            f"KL {acc['mean_kl']:.4f} | {sum(result['seconds'].values()):.1f} s | {result['peak_rss_mb']:.0f} MB")


def table_row(result: dict) -> list[str]:
    if "error" in result:
        return [result["tool"], result["setting"], "failed: " + result["error"].splitlines()[-1][:80]] + [""] * 9
    acc, sim = _accuracy(result), result["sim"]
    runtime = result.get("onnxruntime")
    steps = " · ".join(f"{STEP_NAMES.get(k, k)} {v:.1f}" for k, v in result["seconds"].items())
    latency = result.get("latency")
    speedup = (f"{latency['batch_1']['speedup']:.2f}× / {latency['batch_32']['speedup']:.2f}×"
               if latency else "")
    return [f"{result['tool']} {result['version']}", result["setting"],
            f"{runtime['top1_agreement']:.1%}" if runtime else "not exported", f"{sim['top1_agreement']:.1%}",
            f"{acc['top5_agreement']:.1%}", f"{acc['mean_kl']:.4f}", f"{acc['labelled_top1']:.0%}", steps,
            f"{sum(result['seconds'].values()):.1f}", f"{result['peak_rss_mb']:.0f}", speedup,
            f"{runtime['sim_agreement']:.1%}" if runtime else ""]


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _plots(results: dict[str, dict], docs: Path) -> list[str]:
    """Accuracy-vs-time and latency PNGs under docs/img; returns their paths relative to docs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    (docs / "img").mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for ax, (model, payload) in zip(axes[0], results.items()):
        for key, result in payload["rows"].items():
            if "error" in result:
                continue
            ax.scatter(sum(result["seconds"].values()), _accuracy(result)["top1_agreement"] * 100,
                       label=key, marker="o" if result["tool"] == "lowbit" else "s")
        ax.set(xscale="log", xlabel="quantization time (s, log)", ylabel="top-1 agreement with FP32 (%)",
               title=model)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(docs / "img" / "peers_accuracy_time.png", dpi=110)
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for ax, (model, payload) in zip(axes[0], results.items()):
        rows = [(k, r["latency"]) for k, r in payload["rows"].items() if r.get("latency")]
        for offset, batch in ((-0.2, "batch_1"), (0.2, "batch_32")):
            ax.barh([i + offset for i in range(len(rows))], [lat[batch]["speedup"] for _, lat in rows],
                    height=0.4, label=batch.replace("_", " "))
        ax.set_yticks(range(len(rows)), [k for k, _ in rows], fontsize=7)
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set(xlabel="onnxruntime speed-up of the exported int8 model over FP32", title=model)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(docs / "img" / "peers_latency.png", dpi=110)
    plt.close("all")
    return ["img/peers_accuracy_time.png", "img/peers_latency.png"]


def latency_section(path: Path) -> list[str]:
    """The head-to-head latency table written by ``latency.py``, if it ran for this model."""
    if not path.exists():
        return []
    payload = json.loads(path.read_text())
    ref = payload["models"][payload["reference"]]
    rows = [[key, f"{ms['batch_1_ms']:.2f}", f"{ms['batch_32_ms']:.1f}",
             f"{ref['batch_1_ms'] / ms['batch_1_ms']:.2f}× / {ref['batch_32_ms'] / ms['batch_32_ms']:.2f}×"]
            for key, ms in payload["models"].items()]
    repeats = payload["repeats"]
    return [f"Latency head to head (`latency.py`, {payload['machine']['date'][:10]}): every exported model "
            f"and the FP32 one run once per round, {repeats['batch_1']} rounds at batch 1 and "
            f"{repeats['batch_32']} at batch 32, medians in ms; the last column is the time of "
            f"*{payload['reference']}* (onnxruntime's own quantizer) over the row's (above 1: faster).", "",
            *_markdown(["exported model", "batch 1 ms", "batch 32 ms", "speed vs ORT quantizer b1 / b32"],
                       rows), ""]


def write(results_dir: Path, docs: Path) -> Path:
    """Write ``docs/benchmarks.md`` (and plots) from every ``peers_*.json`` under ``results_dir``."""
    results = {p.stem.removeprefix("peers_"): json.loads(p.read_text())
               for p in sorted(results_dir.glob("peers_*.json"))}
    lines = ["# Benchmarks against the peers", "",
             "Generated by `bench/peers/report.py` from `bench/results/peers_*.json`; do not edit by hand. "
             "Every tool quantizes the same FP32 model with the same calibration images, in its own "
             "virtual environment and process, and is scored on the same held-out images against the FP32 "
             "model's outputs. *top-1 agr. (onnxruntime)* scores the model the tool exports, run by "
             "onnxruntime (what ships); *(sim)* scores the tool's own simulation. Top-5 agreement: the "
             "FP32 top-1 class is among the five highest. KL: mean KL(FP32 ‖ quantized) of the output "
             "distributions, in nats. Labelled top-1: accuracy on foolbox's 20 labelled ImageNet photos. "
             "Speed-up: onnxruntime latency of the FP32 ONNX model over the exported int8 one (medians, "
             "runs alternated). Peak RSS: the tool's whole process.", ""]
    for model, payload in results.items():
        job, machine = payload["job"], payload["machine"]
        lines += [f"## {model}", "",
                  f"{job['calibration_images']} calibration images ({job['calibration_source']}); "
                  f"{job['evaluation_images']} evaluation images ({job['evaluation_source']}), "
                  f"{job['labelled_images']} of them labelled; batch {job['batch_size']}.", "",
                  f"Machine: {machine['cpu_model']} ({machine['cpu_count']} cores; "
                  f"{', '.join(f for f, on in machine['cpu_flags'].items() if on) or 'no AVX2'}), "
                  f"Python {machine['python']}, torch {machine['torch']}, onnxruntime {machine['onnxruntime']}, "
                  f"{machine['date'][:10]}. Rows accumulate over runs of the same job; commands, in order: "
                  + "; ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", payload.get("command", "run.py"))
                                                               for r in payload["rows"].values())) + ".", ""]
        lines += _markdown(HEADER, [table_row(r) for r in payload["rows"].values()]) + [""]
        lines += latency_section(results_dir / f"peer_latency_{model}.json")
    if results:
        lines += [f"![{p}]({p})" for p in _plots(results, docs)] + [""]
    docs.mkdir(parents=True, exist_ok=True)
    page = docs / "benchmarks.md"
    page.write_text("\n".join(lines))
    return page


if __name__ == "__main__":
    print(f"wrote {write(_common.RESULTS, ROOT / 'docs')}")
