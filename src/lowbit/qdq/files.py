"""Write an export's three files (NAME.onnx, NAME.encodings, NAME.qdq.onnx), all or none."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lowbit.atomic import atomic_write_bytes
from lowbit.distributed import barrier, writes_files
from lowbit.errors import NotCalibratedError
from lowbit.qdq.split import SplitGraph
from lowbit.quant.encodings_file import write_encodings


@dataclass(frozen=True)
class ExportPaths:
    """The three files ``export`` writes."""

    onnx: Path
    encodings: Path
    qdq_onnx: Path
    fidelity: object = None
    """The export's :class:`lowbit.fidelity.Fidelity` when ``export`` was given data to verify it on."""

    def __iter__(self):
        return iter((self.onnx, self.encodings, self.qdq_onnx))


def require_encodings(quantizers: dict) -> None:
    """NotCalibratedError naming the first quantizer without an encoding, if any."""
    missing = [k for k, q in quantizers.items() if q.encoding is None]
    if missing:
        raise NotCalibratedError(f"export before calibration: {len(missing)} quantizers have no encoding "
                                 f"(first: {missing[0]!r}); call sim.calibrate(data) first")


def quantizer_args(target, scheme: str) -> dict:
    """The ``quantizer_args`` section of the encodings file."""
    return {"activation_bitwidth": target.default_act_bits, "param_bitwidth": target.default_param_bits,
            "dtype": "int", "is_symmetric": True, "per_channel_quantization": target.per_channel,
            "quant_scheme": scheme}


def write_export(split: SplitGraph, out_dir, name: str, args: dict) -> ExportPaths:
    """Write the split graph's three files (each atomically; on failure none this call created remains)."""
    out = Path(out_dir)
    paths = ExportPaths(out / f"{name}.onnx", out / f"{name}.encodings", out / f"{name}.qdq.onnx")
    if not writes_files():  # under torchrun, rank 0 writes; the others wait for it
        barrier()
        return paths
    out.mkdir(parents=True, exist_ok=True)
    created = [p for p in paths if not p.exists()]
    try:
        atomic_write_bytes(paths.onnx, split.float_model.SerializeToString())
        write_encodings(paths.encodings, split.activation_encodings, split.param_encodings, quantizer_args=args)
        atomic_write_bytes(paths.qdq_onnx, split.qdq_model.SerializeToString())
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    finally:
        barrier()
    return paths
