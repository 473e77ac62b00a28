"""AIMET's quantization-aware training on bench_qat's recipe, for its peer row: BatchNorm folded, ``prepare_model``,
``QuantizationSimModel`` (W8A8, AIMET's default config, range learning initialised from min-max) calibrated on the
same 256 crops, then ``sim.model`` trained as AIMET's docs say, on the same training crops, steps, batch, learning
rate, Adam with cosine decay and distillation loss as ``lowbit.qat``. Run in AIMET's venv
(``bash bench/peers/install_aimet.sh .venv-peers/aimet``):

    .venv-peers/aimet/bin/python bench/peers/qat_aimet.py --steps 300 --batch 16 --lr 1e-5
"""

from __future__ import annotations

import logging

import aimet_torch
import aimet_torch.onnx
import torch
from aimet_torch.batch_norm_fold import fold_all_batch_norms
from aimet_torch.common.defs import QuantScheme
from aimet_torch.common.utils import AimetLogger
from aimet_torch.model_preparer import prepare_model
from aimet_torch.quantsim import QuantizationSimModel
from qat_recipe import run_peer
from run_aimet import drop_dropout


def quantize(model, calibration):
    dummy = calibration[0][:1]
    fold_all_batch_norms(model, None, dummy_input=dummy)
    drop_dropout(model)
    scheme = QuantScheme.training_range_learning_with_tf_init
    sim = QuantizationSimModel(prepare_model(model), dummy, quant_scheme=scheme, default_param_bw=8,
                               default_output_bw=8)
    with torch.no_grad():
        sim.compute_encodings(lambda m: [m(b) for b in calibration])
    return sim.model


def export(model, example, path) -> None:
    aimet_torch.onnx.export(model, (example,), str(path), opset_version=17, input_names=["input"],
                            output_names=["output"], dynamo=False,
                            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})


if __name__ == "__main__":
    AimetLogger.set_level_for_all_areas(logging.WARNING)
    run_peer("aimet", f"aimet-torch {aimet_torch.__version__}", quantize, export, __doc__, range_learning=True,
             batchnorm="folded before")
