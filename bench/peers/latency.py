"""Head-to-head onnxruntime latency of every tool's exported model of one job, all timed in the same rounds.

The per-row speed-ups in the peers table each come from their own run, minutes apart; on a noisy machine
two identical graphs can differ there by 2x. Here every exported model (and the FP32 one) runs once per
round, rounds alternated, so each ratio to onnxruntime's own quantizer output is measured under the same
noise. Sessions do not spin-wait (onnxruntime's threads would otherwise busy-wait after each run and
slow whichever session runs next). Writes ``bench/results/peer_latency_MODEL.json``; ``report.py``
(run after it by ``make bench-peers``) puts the table in docs/benchmarks.md.

    .venv/bin/python bench/peers/latency.py --models mobilenet_v2,efficientnet_lite0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import _common  # noqa: E402
import report  # noqa: E402
from runner_common import Job, ort_session  # noqa: E402

ROUNDS = "100,12"
REFERENCE = "onnxruntime w8a8-minmax"


def measure(job: Job, exported: dict[str, Path], rounds: dict[int, int]) -> dict:
    """Median ms per model at batch 1 and 32 (FP32 included), every model run once per round."""
    sessions = {"fp32": ort_session(job.fp32_onnx, spinning=False)} | {
        key: ort_session(path, spinning=False) for key, path in exported.items()}
    figures = {key: {} for key in sessions}
    for batch, repeats in rounds.items():
        x = np.ascontiguousarray(np.resize(job.evaluation[:32], (batch, *job.evaluation.shape[1:])))
        calls = {key: (lambda s=session: s.run(None, {s.get_inputs()[0].name: x}))
                 for key, session in sessions.items()}
        for key, times in _common.alternated_times(calls, repeats, warmup=2).items():
            figures[key][f"batch_{batch}_ms"] = statistics.median(times) * 1e3
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--results", type=Path, default=_common.RESULTS)
    parser.add_argument("--reference", default=REFERENCE, help="the row the others are compared with")
    parser.add_argument("--rounds", default=ROUNDS, help="timed rounds at batch 1 and at batch 32")
    args = parser.parse_args()
    rounds = dict(zip((1, 32), (int(n) for n in args.rounds.split(","))))
    for model in args.models.split(","):
        rows = json.loads((args.results / f"peers_{model}.json").read_text())["rows"]
        exported = {key: Path(row["exported"]) for key, row in rows.items()
                    if row.get("exported") and Path(row["exported"]).exists()}
        if args.reference not in exported:
            raise SystemExit(f"{model}: no exported model of row {args.reference!r}; run it with run.py first")
        figures = measure(Job(args.work / model), exported, rounds)
        payload = {"machine": _common.machine_info(), "model": model, "reference": args.reference,
                   "repeats": {f"batch_{b}": r for b, r in rounds.items()}, "models": figures}
        path = args.results / f"peer_latency_{model}.json"
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\n{model}\n" + "\n".join(report.latency_section(path)))


if __name__ == "__main__":
    main()
