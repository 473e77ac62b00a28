"""Whether the int8 export is faster: onnxruntime's latency of the QDQ file against the float file, and
the ops onnxruntime still runs in float between DequantizeLinear and QuantizeLinear."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort

from lowbit.data import as_call, batch_of, map_call
from lowbit.runtime import feeds, session

_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
_MOVES_DATA = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Shape",
                         "Gather", "Concat", "Slice", "Split", "MaxPool", "Pad"})


@dataclass(frozen=True)
class Speed:
    """Median onnxruntime latency of one sample through the float and the QDQ file, and the op types
    (with counts) that compute in float on dequantized inputs in onnxruntime's optimised QDQ graph."""

    float_ms: float
    int8_ms: float
    float_ops: dict

    def row(self) -> str:
        """One line; says so when int8 is not faster, naming the float ops."""
        ratio = self.float_ms / self.int8_ms
        text = f"FP32 {self.float_ms:.2f} ms, int8 {self.int8_ms:.2f} ms ({ratio:.2f}x)"
        if ratio < 1.0:
            text += "; warning: int8 is slower than FP32 here"
        if self.float_ops:
            text += "; in float between Q/DQ: " + ", ".join(f"{op} ×{n}" for op, n in sorted(self.float_ops.items()))
        return text


def measure_speed(float_path, qdq_path, batch, runs: int = 20) -> Speed:
    """Median latency over ``runs`` (after warm-up) of ``batch``'s first sample (the whole batch when its arrays differ
    in first-axis size) through both files in onnxruntime, all graph optimisations, default threads."""
    sample = _first_sample(batch)
    with tempfile.TemporaryDirectory() as folder:
        optimised = Path(folder) / "optimised.onnx"
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(optimised)
        options.log_severity_level = 3
        quantized = ort.InferenceSession(str(qdq_path), options, providers=["CPUExecutionProvider"])
        float_ops = float_ops_between_qdq(onnx.load(str(optimised)))
    return Speed(median_ms(session(float_path), sample, runs), median_ms(quantized, sample, runs), float_ops)


def float_ops_between_qdq(model: onnx.ModelProto) -> dict[str, int]:
    """Op types (with counts) of an optimised graph's nodes that compute on a DequantizeLinear's output:
    the ones onnxruntime did not turn into integer kernels (data-movement ops excluded)."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return dict(Counter(n.op_type for n in model.graph.node
                        if n.op_type not in _QDQ | _MOVES_DATA and n.domain in ("", "ai.onnx")
                        and any(i in dequantized for i in n.input)))


def _first_sample(batch):
    """``batch`` cut to its first sample when all its arrays share one first-axis size (a state batched
    on another axis keeps the whole batch)."""
    args, kwargs = as_call(batch)
    if len({v.shape[0] for v in (*args, *kwargs.values()) if getattr(v, "ndim", 0) > 0}) != 1:
        return batch
    return batch_of(map_call(lambda v: v[:1] if getattr(v, "ndim", 0) > 0 else v, args, kwargs))


def median_ms(runtime: ort.InferenceSession, sample, runs: int, warmups: int = 3) -> float:
    """Median latency (ms) of ``runtime`` on ``sample`` over ``runs`` runs, after ``warmups`` untimed ones."""
    values = feeds(runtime, sample)
    for _ in range(warmups):
        runtime.run(None, values)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runtime.run(None, values)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0

