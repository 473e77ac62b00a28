"""Writing a compressed float model as the files a user deploys or quantizes next: ``.pt2`` and ``.onnx``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from lowbit.data import as_call
from lowbit.errors import ExportError, first_line


def write_model_files(model: torch.nn.Module, example_input, out_dir, name: str = "model") -> tuple[Path, Path]:
    """``NAME.pt2`` (torch.export) and ``NAME.onnx`` of ``model`` under ``out_dir``, the batch axis free in both
    (give an example of two or more samples), each renamed into place; ExportError, nothing written, on failure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    args, kwargs = as_call(example_input)
    names = [f"input_{i}" for i in range(len(args))]
    written = []
    try:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".lowbit-") as folder:
            pt2, onnx_path = Path(folder) / f"{name}.pt2", Path(folder) / f"{name}.onnx"
            model.eval()
            batch_free = tuple({0: torch.export.Dim.AUTO} for _ in args)
            torch.export.save(torch.export.export(model, args, kwargs, dynamic_shapes=batch_free or None), pt2)
            torch.onnx.export(model, args, str(onnx_path), dynamo=False, input_names=names,
                              dynamic_axes={n: {0: "batch"} for n in names})
            for path in (pt2, onnx_path):
                os.replace(path, out_dir / path.name)
                written.append(out_dir / path.name)
    except Exception as error:
        for path in written:
            path.unlink(missing_ok=True)
        raise ExportError(f"cannot write the compressed model: {first_line(error)}") from None
    return tuple(written)
