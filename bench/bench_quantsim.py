"""QuantSim overheads on the pretrained MobileNetV2 (224x224, 2 torch threads).

1. Forward, batch 32: QuantSim (``lowbit.quantize(model, data, target="cpu-int8")``, BN folded) vs the
   FP32 model with BN folded and with BN unfolded. Medians of alternating repeats after a warm-up.
   Goal: sim / FP32 <= 1.3x.
2. Calibration of 256 augmented scikit-image photos (8 batches of 32) with each scheme: time of
   ``sim.calibrate`` alone / time of the FP32 (BN-folded) forward over the same 256 images.
   Goals: minmax <= 1.2x, sqnr and entropy <= 2x (percentile: reported).
3. Peak RSS (current RSS sampled every 2 ms during the timed phase) of calibration vs of FP32
   inference over the same data. Each measurement
   runs in a fresh subprocess (same data file, same model, one warm-up batch each) so they cannot share
   a peak; the calibration times of 2. come from the same subprocesses. Goal: <= 1.5x.
   The FP32 subprocess runs twice (before and after the schemes); its times/RSS are averaged.
4. The min-max calibration and the FP32 forward of 2. again, each in a subprocess started with PyTorch's
   ``THP_MEM_ALLOC_ENABLE=1`` (its CPU allocator then asks Linux for transparent huge pages on large tensors, so
   the first layers' activations fault in 2 MiB pages instead of 4 KiB ones), against the runs of 2. without it.

    .venv/bin/python bench/bench_quantsim.py [--quick]   # --quick: only 1. (forward), nothing written
"""

from __future__ import annotations

import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402

SCHEMES = ("minmax", "percentile", "sqnr", "entropy")
GOALS = {"forward": 1.3, "minmax": 1.2, "sqnr": 2.0, "entropy": 2.0, "percentile": None, "rss": 1.5}
FORWARD_REPEATS = 3


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssSampler:
    """Samples this process's current RSS every few milliseconds; ``peak_mib`` is the largest seen.

    ru_maxrss cannot isolate a phase (its peak may come from loading the model or data earlier).
    """

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak_mib, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        page = os.sysconf("SC_PAGE_SIZE") / 2**20
        while not self._stop.is_set():
            with open("/proc/self/statm") as statm:
                self.peak_mib = max(self.peak_mib, int(statm.read().split()[1]) * page)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def folded(model, example):
    model = copy.deepcopy(model).eval()
    lowbit.fold_batchnorm(model, example)
    return model


def child(mode: str, data_path: str) -> None:
    """Fresh process: FP32 inference (mode 'fp32') or calibration with scheme ``mode``; prints JSON."""
    _common.setup_threads()
    data = torch.load(data_path)
    model = folded(pretrained_mobilenet_v2(), data[0])
    with torch.no_grad():
        if mode == "fp32":
            model(data[0])  # warm-up
            rss_before = maxrss_mib()
            with RssSampler() as sampler:
                start = time.perf_counter()
                for batch in data:
                    model(batch)
                seconds = time.perf_counter() - start
        else:
            sim = lowbit.QuantSim(model, data[0], target="cpu-int8", scheme=mode)
            sim.calibrate(data[:1])  # warm-up
            rss_before = maxrss_mib()
            with RssSampler() as sampler:
                start = time.perf_counter()
                sim.calibrate(data)
                seconds = time.perf_counter() - start
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_mib": sampler.peak_mib,
                      "process_maxrss_mib": maxrss_mib(),
                      "peak_rss_before_timed_mib": rss_before}))


def run_child(mode: str, data_path: str, huge_pages: bool = False) -> dict:
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1"} if huge_pages else None
    out = subprocess.run([sys.executable, __file__, "--child", mode, data_path], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(quick: bool = False) -> None:
    _common.setup_threads()
    start = time.perf_counter()
    model = pretrained_mobilenet_v2().eval()
    data = _common.calibration_batches(n_images=256, batch=32)
    x = data[0]

    # 1. forward time, batch 32
    sim = lowbit.quantize(model, data, target="cpu-int8", num_batches=2)
    models = {"fp32_unfolded": model, "fp32_folded": folded(model, x), "sim": sim}
    times = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m(x)  # warm-up
        for _ in range(FORWARD_REPEATS):
            for name, m in models.items():
                t0 = time.perf_counter()
                m(x)
                times[name].append(time.perf_counter() - t0)
    fwd = {k: statistics.median(v) for k, v in times.items()}
    del sim, models
    if quick:
        _common.print_table(["measure", "sim", "FP32", "ratio"], [
            [f"forward b32: sim / {base.replace('_', ' ')}", f"{fwd['sim'] * 1e3:.0f} ms",
             f"{fwd[base] * 1e3:.0f} ms", f"{fwd['sim'] / fwd[base]:.2f}×"]
            for base in ("fp32_folded", "fp32_unfolded")])
        return

    # 2./3. calibration time and peak RSS, fresh subprocesses
    with tempfile.TemporaryDirectory() as tmp:
        data_path = str(Path(tmp) / "calib.pt")
        torch.save(data, data_path)
        del data
        fp32_runs = [run_child("fp32", data_path)]
        scheme_runs = {s: run_child(s, data_path) for s in SCHEMES}
        fp32_runs.append(run_child("fp32", data_path))
        huge = {mode: run_child(mode, data_path, huge_pages=True) for mode in ("fp32", "minmax")}
    fp32_s = statistics.mean(r["seconds"] for r in fp32_runs)
    fp32_rss = statistics.mean(r["peak_rss_mib"] for r in fp32_runs)

    rows = []

    def verdict(ratio, goal):
        if goal is None:
            return "—"
        return "yes" if ratio <= goal else f"**no** (+{(ratio / goal - 1):.0%} over)"

    for base in ("fp32_folded", "fp32_unfolded"):
        r = fwd["sim"] / fwd[base]
        rows.append([f"forward b32: sim / {base.replace('_', ' ')}", f"{fwd['sim'] * 1e3:.0f} ms / "
                     f"{fwd[base] * 1e3:.0f} ms", f"{r:.2f}×", "≤ 1.3×", verdict(r, GOALS["forward"])])
    for s in SCHEMES:
        r = scheme_runs[s]["seconds"] / fp32_s
        goal = GOALS[s]
        rows.append([f"calibrate 256 img {s} / FP32 fwd 256 img", f"{scheme_runs[s]['seconds']:.1f} s / "
                     f"{fp32_s:.1f} s", f"{r:.2f}×", f"≤ {goal}×" if goal else "—", verdict(r, goal)])
    for s in SCHEMES:
        r = scheme_runs[s]["peak_rss_mib"] / fp32_rss
        rows.append([f"peak RSS calibrate {s} / FP32 inference", f"{scheme_runs[s]['peak_rss_mib']:.0f} MiB / "
                     f"{fp32_rss:.0f} MiB", f"{r:.2f}×", "≤ 1.5×", verdict(r, GOALS["rss"])])
    for mode, label, plain in (("minmax", "calibrate 256 img minmax", scheme_runs["minmax"]["seconds"]),
                               ("fp32", "FP32 fwd 256 img", fp32_s)):
        rows.append([f"{label}: THP_MEM_ALLOC_ENABLE=1 / unset", f"{huge[mode]['seconds']:.1f} s / {plain:.1f} s",
                     f"{huge[mode]['seconds'] / plain:.2f}×", "—", "—"])
    _common.print_table(["measure", "values", "ratio", "goal", "met"], rows)
    path = _common.write_results("bench_quantsim", {
        "model": "mobilenet_v2 (pretrained, 224x224)", "target": "cpu-int8", "batch": 32,
        "calibration_images": 256,
        "forward_seconds_median": fwd, "forward_seconds_all": times,
        "forward_ratio_sim_over_fp32_folded": fwd["sim"] / fwd["fp32_folded"],
        "forward_ratio_sim_over_fp32_unfolded": fwd["sim"] / fwd["fp32_unfolded"],
        "fp32_inference_runs": fp32_runs, "calibration_runs": scheme_runs,
        "calibration_time_ratio": {s: scheme_runs[s]["seconds"] / fp32_s for s in SCHEMES},
        "peak_rss_ratio": {s: scheme_runs[s]["peak_rss_mib"] / fp32_rss for s in SCHEMES},
        "huge_pages_runs": huge,
        "huge_pages_time_ratio": {"minmax": huge["minmax"]["seconds"] / scheme_runs["minmax"]["seconds"],
                                  "fp32": huge["fp32"]["seconds"] / fp32_s},
        "goals": GOALS, "wall_seconds": time.perf_counter() - start})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main(quick="--quick" in sys.argv[1:])
