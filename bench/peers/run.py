"""Peer benchmark: the same models, images and settings through lowbit, AIMET, onnxruntime's quantizer and
NNCF, each tool in its own virtual environment and its own process; one JSON per model, then the report.

    .venv/bin/python bench/peers/run.py                       # every tool (make bench-peers installs them)
    .venv/bin/python bench/peers/run.py --tools lowbit,onnxruntime --models mobilenet_v2
    .venv/bin/python bench/peers/run.py --smoke --work /tmp/w --results /tmp/r   # seconds, as in CI
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
import _common  # noqa: E402
import metrics  # noqa: E402
import prepare  # noqa: E402
import report  # noqa: E402
from runner_common import Job, run_onnx  # noqa: E402

# tool: (runner script, settings run by default)
TOOLS = {
    "lowbit": ("run_lowbit.py", ("w8a8-minmax", "w8a8-sqnr", "w8a8-mean-minmax-float-logits-bias-correction",
                                 "w8a8-cpu-int8-minmax", "w8a8-cpu-int8-mean-minmax-float-logits-bias-correction",
                                 "w4a8-adaround", "w4a8-adaround-reduced")),
    "onnxruntime": ("run_onnxruntime.py", ("w8a8-minmax", "w8a8-minmax-reduce-range", "w8a8-entropy",
                                           "w8a8-entropy-reduce-range", "w8a8-percentile",
                                           "w8a8-percentile-reduce-range")),
    "aimet": ("run_aimet.py", ("w8a8-minmax", "w8a8-tf-enhanced", "w4a8-adaround-reduced")),
    "nncf": ("run_nncf.py", ("torch-w8a8", "onnx-w8a8")),
}
SMOKE = {"tools": {"lowbit": ("w8a8-minmax",), "onnxruntime": ("w8a8-minmax-reduce-range",)},
         "calibration_images": 8, "evaluation_images": 16, "batch_size": 8}


def interpreter(tool: str, overrides: dict[str, str]) -> str:
    """lowbit runs in this venv; each peer in ``.venv-peers/TOOL`` unless ``--python TOOL=PATH`` says otherwise."""
    if tool in overrides:
        return overrides[tool]
    if tool == "lowbit":
        return sys.executable
    path = ROOT / ".venv-peers" / tool / "bin" / "python"
    if not path.exists():
        raise SystemExit(f"{tool}: no venv at {path.parent.parent}; run `make bench-peers` (it installs the peers)")
    return str(path)


def run_setting(python: str, tool: str, setting: str, job: Path, out: Path) -> dict:
    """Run one runner in its own process; return its result.json plus the wall time of the whole process."""
    script = HERE / TOOLS[tool][0]
    start = time.perf_counter()
    proc = subprocess.run([python, str(script), "--job", str(job), "--setting", setting, "--out", str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        return {"tool": tool, "setting": setting, "error": tail}
    result = json.loads((out / "result.json").read_text())
    result["process_seconds"] = time.perf_counter() - start
    return result


def figures(result: dict, job: Job, fp32: np.ndarray, labels: np.ndarray, out: Path) -> dict:
    """Accuracy of the tool's own simulation, of its exported model in onnxruntime, and latency."""
    outputs = np.load(out / "outputs.npy")
    result["sim"] = {**metrics.agreement(fp32, outputs), "labelled_top1": metrics.labelled_top1(outputs, labels)}
    if result.get("exported"):
        exported = Path(result["exported"])
        executed = run_onnx(exported, job.evaluation, job.batch_size)
        result["onnxruntime"] = {**metrics.agreement(fp32, executed),
                                 "labelled_top1": metrics.labelled_top1(executed, labels),
                                 "sim_agreement": float((executed.argmax(1) == outputs.argmax(1)).mean())}
        result["latency"] = metrics.latency(job.fp32_onnx, exported, job.evaluation[:32])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(prepare.MODELS))
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated; TOOL:SETTING picks one setting")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--evaluation-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--python", action="append", default=[], help="TOOL=PATH of the interpreter to use")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="jobs and the tools' exported models")
    parser.add_argument("--results", type=Path, default=_common.RESULTS)
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where benchmarks.md and plots go")
    parser.add_argument("--smoke", action="store_true", help="tiny data, lowbit and onnxruntime, one venv")
    args = parser.parse_args()
    plan = _plan(args)
    overrides = dict(p.split("=", 1) for p in args.python)
    if args.smoke:
        overrides.setdefault("onnxruntime", sys.executable)
        args.calibration_images, args.evaluation_images, args.batch_size = (
            SMOKE["calibration_images"], SMOKE["evaluation_images"], SMOKE["batch_size"])
    for model in args.models.split(","):
        job = prepare.prepare(model, args.work / model, args.calibration_images, args.evaluation_images,
                              args.batch_size)
        path = args.results / f"peers_{model}.json"
        data = Job(job)
        info = data.info
        fp32, labels = np.load(job / "fp32_outputs.npy"), np.load(job / "labels.npy")
        previous = json.loads(path.read_text()) if path.exists() else {}
        machine = _common.machine_info()
        same_run_conditions = previous.get("job") == info and _cpu(previous.get("machine", {})) == _cpu(machine)
        rows = previous.get("rows", {}) if same_run_conditions else {}  # rows of one job on one kind of CPU
        for row in rows.values():  # rows written before commands were kept per row
            row.setdefault("command", previous.get("command", "run.py"))
        command = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
        for tool, settings in plan.items():
            python = interpreter(tool, overrides)
            for setting in settings:
                out = args.work / model / "runs" / f"{tool}-{setting}"
                result = run_setting(python, tool, setting, job, out)
                if "error" not in result:
                    result = figures(result, data, fp32, labels, out)
                rows[f"{tool} {setting}"] = {**result, "command": command}
                print(report.row_line(model, result), flush=True)
                args.results.mkdir(parents=True, exist_ok=True)
                payload = {"machine": machine, "job": info, "rows": rows}
                path.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.smoke:
        print(f"wrote {report.write(args.results, args.docs)}")


def _cpu(machine: dict) -> tuple:
    """What makes int8 results comparable across runs: the CPU, its core count and instruction sets."""
    return machine.get("cpu_model"), machine.get("cpu_count"), machine.get("cpu_flags")


def _plan(args) -> dict[str, tuple[str, ...]]:
    """{tool: settings} from ``--tools`` (TOOL or TOOL:SETTING items), or the smoke plan."""
    if args.smoke:
        return SMOKE["tools"]
    plan: dict[str, list[str]] = {}
    for item in args.tools.split(","):
        tool, _, setting = item.partition(":")
        if tool not in TOOLS:
            raise SystemExit(f"unknown tool {tool!r}; choose from {', '.join(TOOLS)}")
        plan.setdefault(tool, []).extend([setting] if setting else TOOLS[tool][1])
    return {tool: tuple(settings) for tool, settings in plan.items()}


if __name__ == "__main__":
    main()
