"""Shared helpers for the bench scripts: machine info, data, timing, result output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("LOWBIT_QUIET", "1")

import torch  # noqa: E402

THREADS = 2
RESULTS = Path(__file__).resolve().parent / "results"


def setup_threads() -> None:
    torch.set_num_threads(THREADS)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(l for l in text.splitlines() if l.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        flags = []
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")}


def machine_info() -> dict:
    import onnxruntime
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_threads": torch.get_num_threads(),
        "ort_threads": THREADS,
    }


def median_time(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def timed_session(path):
    """An onnxruntime session for timing in turn with others: THREADS threads that sleep after a run instead of
    busy-waiting, which would take the cores from whatever is timed next."""
    from lowbit.runtime import session
    return session(path, threads=THREADS, spinning=False)


def alternated_times(calls: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each of ``calls`` (name → function), the calls alternated within every round
    so machine noise hits all alike; ``warmup`` untimed rounds first."""
    times = {name: [] for name in calls}
    for step in range(warmup + repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def calibration_batches(n_images: int = 256, batch: int = 32, seed: int = 0) -> list[torch.Tensor]:
    """Augmented crops of scikit-image's photos, preprocessed, as batches."""
    from lowbit.zoo import augmented, calibration_photos, photos_to_batch
    photos = [img for img, _ in calibration_photos()]
    images = augmented(photos, n_images, seed=seed)
    return [photos_to_batch(images[i:i + batch]) for i in range(0, n_images, batch)]


def evaluation_batches(n_augmented: int = 108, batch: int = 32, seed: int = 1):
    """The 20 labelled photos (centre crop) plus augmented crops of them; returns (batches, labels).

    ``labels`` holds one ImageNet class per image (the photo's label, crops inherit it)."""
    from lowbit.zoo import augmented, labelled_photos, photos_to_batch
    labelled = labelled_photos()
    photos = [img for img, _, _ in labelled]
    labels = [lab for _, lab, _ in labelled]
    images = list(photos) + augmented(photos, n_augmented, seed=seed)
    all_labels = labels + [labels[i % len(labels)] for i in range(n_augmented)]
    batches = [photos_to_batch(images[i:i + batch]) for i in range(0, len(images), batch)]
    return batches, torch.tensor(all_labels)


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def previous_rows(name: str) -> dict:
    """The ``rows`` of results/NAME.json as last written (each row records its own machine), or none."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()).get("rows", {}) if path.exists() else {}


def print_table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
