"""NNCF's quantization-aware training on bench_qat's recipe, for its peer row: ``nncf.quantize`` (INT8 defaults)
on the same 256 calibration crops, then ordinary fine-tuning of the returned model on the same training crops,
steps, batch, learning rate, Adam with cosine decay and distillation loss as ``lowbit.qat``; BatchNorm trains on
batch statistics (NNCF keeps it unfolded). Run in NNCF's venv (``bash bench/peers/install_nncf.sh .venv-peers/nncf``):

    NNCF_CI=1 .venv-peers/nncf/bin/python bench/peers/qat_nncf.py --steps 300 --batch 16 --lr 1e-5
"""

from __future__ import annotations

import os

os.environ["NNCF_CI"] = "1"  # NNCF's telemetry becomes a stub

import nncf  # noqa: E402
import torch  # noqa: E402
from qat_recipe import run_peer  # noqa: E402


def quantize(model, calibration):
    return nncf.quantize(model, nncf.Dataset(calibration), subset_size=256)


def export(quantized, example, path) -> None:
    stripped = nncf.strip(quantized, example_input=example)
    torch.onnx.export(stripped, (example,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


if __name__ == "__main__":
    run_peer("nncf", f"nncf {nncf.__version__}", quantize, export, __doc__, batchnorm="trained (NNCF keeps it)")
