"""AIMET's runner (aimet-torch): BN fold, prepare_model, QuantizationSimModel with AIMET's default config
(per-channel), compute_encodings, AdaRound for the W4A8 settings, export (model.qdq.onnx is what ships)."""

from __future__ import annotations

import logging
import os

from runner_common import Job, Steps, parse_args, torch_outputs, write_result

# AdaRound iterations per layer for the reduced setting (AIMET's default is 15,000 at 4-bit weights)
REDUCED_ITERATIONS = 100
# setting: (weight bits, quant scheme, AdaRound iterations per layer: 0 none, None AIMET's default);
# the AdaRound settings keep apply_adaround's default scheme, tf-enhanced
SETTINGS = {
    "w8a8-minmax": (8, "post_training_tf", 0),
    "w8a8-tf-enhanced": (8, "post_training_tf_enhanced", 0),
    "w4a8-adaround-default": (4, "post_training_tf_enhanced", None),
    "w4a8-adaround-reduced": (4, "post_training_tf_enhanced", REDUCED_ITERATIONS),
}


def drop_dropout(model) -> int:
    """Replace Dropout (a no-op in eval) by Identity: AIMET's Dropout drops the encoding of its input, so the
    next Linear's int32 bias gets a statistical scale, and onnxruntime's QGemm fusion misreads that bias."""
    import torch
    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Dropout)]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, torch.nn.Identity())
    return len(names)


def adaround(model, dummy, job: Job, out, param_bw: int, scheme, iterations: int | None):
    """AIMET's AdaRound over all calibration batches; returns the rounded model and its encodings file."""
    import torch
    from aimet_torch.adaround import Adaround, AdaroundParameters
    loader = torch.utils.data.DataLoader(torch.from_numpy(job.calibration), batch_size=job.batch_size)
    params = AdaroundParameters(loader, num_batches=len(loader), default_num_iterations=iterations)
    model = Adaround.apply_adaround(model, dummy, params, path=str(out), filename_prefix="adaround",
                                    default_param_bw=param_bw, default_quant_scheme=scheme)
    return model, out / "adaround.encodings"


def export(sim, dummy, out, opset: int) -> tuple[object, str]:
    """sim.onnx.export (model.onnx + model.encodings), then the QDQ ONNX; returns the QDQ path (None where
    AIMET or onnxruntime fails on it) and a note."""
    import aimet_torch.onnx
    import onnxruntime
    names = {"input_names": ["input"], "output_names": ["output"], "dynamo": False,
             "dynamic_axes": {"input": {0: "batch"}, "output": {0: "batch"}}}
    sim.onnx.export((dummy,), str(out / "model.onnx"), **names)
    qdq = out / "model.qdq.onnx"
    try:
        aimet_torch.onnx.export(sim.model, (dummy,), str(qdq), opset_version=opset, **names)
        arg = onnxruntime.InferenceSession(str(qdq), providers=["CPUExecutionProvider"]).get_inputs()[0]
    except Exception as error:  # noqa: BLE001  (recorded in the notes)
        return None, f"no QDQ ONNX: {type(error).__name__}: {error}"
    if arg.type != "tensor(float)" or len(arg.shape) != 4:
        return None, f"QDQ ONNX not used: its input is {arg.type} {arg.shape}"
    return qdq, f"QDQ ONNX opset {opset}"


def main() -> None:
    args = parse_args(tuple(SETTINGS), __doc__)
    import torch
    import aimet_torch
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.common.utils import AimetLogger
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.quantsim import QuantizationSimModel
    torch.set_num_threads(2)
    AimetLogger.set_level_for_all_areas(logging.WARNING)
    job, steps = Job(args.job), Steps()
    param_bw, scheme_name, iterations = SETTINGS[args.setting]
    scheme = getattr(QuantScheme, scheme_name)
    if iterations != 0 and "AIMET_ADAROUND_ITERATIONS" in os.environ:  # for short test runs
        iterations = int(os.environ["AIMET_ADAROUND_ITERATIONS"])
    args.out.mkdir(parents=True, exist_ok=True)
    model, calibration = job.model(), job.torch_batches("calibration")
    dummy = calibration[0][:1]
    with steps("fold"):
        folded = fold_all_batch_norms(model, None, dummy_input=dummy)
    with steps("sim creation"):
        dropped = drop_dropout(model)
        model = prepare_model(model)
    notes = [f"QuantScheme.{scheme_name}", f"{len(folded)} BN folded", f"{dropped} Dropout made Identity"]
    if iterations != 0:
        with steps("adaround"):
            model, encodings = adaround(model, dummy, job, args.out, param_bw, scheme, iterations)
        notes.append(f"AdaRound {iterations or 'default (15000)'} iterations per layer")
    with steps("sim creation"):
        sim = QuantizationSimModel(model, dummy, quant_scheme=scheme, default_param_bw=param_bw,
                                   default_output_bw=8)
        if iterations != 0:
            sim.set_and_freeze_param_encodings(str(encodings))
    with steps("calibration"):
        sim.compute_encodings(lambda m: [m(b) for b in calibration])
    outputs = torch_outputs(sim.model, job)
    with steps("export"):
        qdq, note = export(sim, dummy, args.out, opset=21 if param_bw < 8 else 17)
    notes.append(note)
    write_result(args.out, tool="aimet-torch", version=aimet_torch.__version__, setting=args.setting,
                 steps=steps, outputs=outputs, exported=qdq, notes="; ".join(notes))


if __name__ == "__main__":
    main()
