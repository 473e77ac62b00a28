"""Which channel counts onnxruntime turns into time: a MobileNet chain (1×1 expand → depthwise 3×3 → 1×1 project) at
hidden widths 64..160 in steps of 8, its FP32 file and lowbit's int8 QDQ file, median milliseconds per batch of 32 at
28×28 (all sessions alternated in one run), and the time per hidden channel. It decides the multiple that
``lowbit.compress`` rounds kept channels to.

    .venv/bin/python bench/bench_channel_alignment.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import lowbit  # noqa: E402
from lowbit.compression.files import write_model_files  # noqa: E402

WIDTHS = range(64, 161, 8)
CHANNELS, SIZE, BATCH, REPEATS = 32, 28, 32, 30


def chain(hidden: int) -> nn.Module:
    torch.manual_seed(hidden)
    return nn.Sequential(nn.Conv2d(CHANNELS, hidden, 1), nn.ReLU6(),
                         nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden), nn.ReLU6(),
                         nn.Conv2d(hidden, CHANNELS, 1)).eval()


def main() -> None:
    _common.setup_threads()
    x = torch.randn(BATCH, CHANNELS, SIZE, SIZE)
    calls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for hidden in WIDTHS:
            model = chain(hidden)
            _, fp32 = write_model_files(model, x[:2], Path(tmp), f"fp32-{hidden}")
            int8 = lowbit.quantize(model, [x[:8]]).export(Path(tmp), name=f"int8-{hidden}").qdq_onnx
            for kind, path in (("fp32", fp32), ("int8", int8)):
                run = _common.timed_session(path)
                feed = {run.get_inputs()[0].name: x.numpy()}
                calls[(kind, hidden)] = lambda run=run, feed=feed: run.run(None, feed)
        times = _common.alternated_times(calls, REPEATS, warmup=3)
    ms = {key: 1000 * statistics.median(values) for key, values in times.items()}
    rows = {str(hidden): {kind: ms[(kind, hidden)] for kind in ("fp32", "int8")} for hidden in WIDTHS}
    _common.print_table(["hidden channels", "multiple of 16", "FP32 ms", "FP32 µs / channel", "int8 ms",
                         "int8 µs / channel"],
                        [[hidden, "yes" if hidden % 16 == 0 else "no",
                          f"{ms[('fp32', hidden)]:.2f}", f"{1000 * ms[('fp32', hidden)] / hidden:.1f}",
                          f"{ms[('int8', hidden)]:.2f}", f"{1000 * ms[('int8', hidden)] / hidden:.1f}"]
                         for hidden in WIDTHS])
    path = _common.write_results("bench_channel_alignment", {"batch": BATCH, "size": SIZE, "channels": CHANNELS,
                                                             "milliseconds": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
