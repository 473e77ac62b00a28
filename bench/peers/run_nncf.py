"""Intel NNCF's runner: ``nncf.quantize`` with its defaults (performance preset, fast bias correction) on
the torch model, exported with ``torch.onnx.export``, or on the FP32 ONNX model (model.qdq.onnx ships)."""

from __future__ import annotations

import os

from runner_common import Job, Steps, onnx_outputs, parse_args, torch_outputs, write_result

# NNCF swaps its telemetry for a stub when this is set (nncf/definitions.py); the runner sends nothing.
os.environ["NNCF_CI"] = "1"

SETTINGS = ("torch-w8a8", "onnx-w8a8")
DEFAULTS = "nncf.quantize defaults: preset PERFORMANCE (symmetric int8), per-channel weights, " \
           "fast_bias_correction=True, target_device ANY"


def calibration_loader(job: Job):
    """The calibration images as a torch DataLoader of ``batch_size``, the form NNCF's docs use; NNCF reads
    its batch_size and then takes activation statistics per image (batchwise_statistics)."""
    import torch
    return torch.utils.data.DataLoader(torch.from_numpy(job.calibration), batch_size=job.batch_size)


def export_torch(model, job: Job, path) -> tuple[object, str]:
    """Strip NNCF's quantizers to torch FakeQuantize and export them as QDQ ONNX, as prepare.py does.
    Returns (the ONNX path, or None if onnxruntime can't run it, and a note)."""
    import nncf
    import torch
    example = torch.from_numpy(job.calibration[:1])
    try:
        stripped = nncf.strip(model, example_input=example)
        torch.onnx.export(stripped, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        onnx_outputs(path, job)
    except Exception as error:  # noqa: BLE001 - any failure means there is no shippable ONNX
        return None, f"export failed: {type(error).__name__}: {error}"
    return path, "export: nncf.strip (FakeQuantize) + torch.onnx.export(dynamo=False, opset 17)"


def main() -> None:
    args = parse_args(SETTINGS, __doc__)
    import nncf
    import torch
    torch.set_num_threads(2)
    job, steps = Job(args.job), Steps()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "model.qdq.onnx"
    subset = len(job.calibration)
    if args.setting == "torch-w8a8":
        model = job.model()
        with steps("calibration"):
            quantized = nncf.quantize(model, nncf.Dataset(calibration_loader(job)), subset_size=subset)
        with steps("export"):
            exported, note = export_torch(quantized, job, path)
        outputs = torch_outputs(quantized, job)
    else:
        import onnx
        model = onnx.load(str(job.fp32_onnx))
        name = model.graph.input[0].name
        dataset = nncf.Dataset(calibration_loader(job), lambda batch: {name: batch.numpy()})
        with steps("calibration"):
            quantized = nncf.quantize(model, dataset, subset_size=subset)
        with steps("export"):
            onnx.save(quantized, str(path))
        exported, note = path, "export: onnx.save of the quantized ModelProto"
        outputs = onnx_outputs(path, job)
    write_result(args.out, tool="nncf", version=nncf.__version__, setting=args.setting, steps=steps,
                 outputs=outputs, exported=exported, notes=f"{DEFAULTS}; subset_size={subset}; {note}")


if __name__ == "__main__":
    main()
