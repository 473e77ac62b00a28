"""Intel NNCF's runner: ``nncf.quantize`` with its defaults on the torch model (exported with nncf.strip
and torch.onnx.export) or on the FP32 ONNX model; model.qdq.onnx is what ships."""

from __future__ import annotations

import os

from runner_common import Job, Steps, onnx_outputs, parse_args, torch_outputs, write_result

# NNCF swaps its telemetry for a stub when this is set (nncf/definitions.py, nncf/telemetry/wrapper.py).
os.environ["NNCF_CI"] = "1"

SETTINGS = ("torch-w8a8", "onnx-w8a8")
DEFAULTS = ("nncf.quantize defaults: preset PERFORMANCE (symmetric int8, per-channel weights), "
            "fast_bias_correction=True, target_device ANY")


def calibration_loader(job: Job):
    """The calibration images in a torch DataLoader, as NNCF's docs pass them: NNCF reads its batch_size
    and then takes activation statistics per image (batchwise_statistics)."""
    import torch
    return torch.utils.data.DataLoader(torch.from_numpy(job.calibration), batch_size=job.batch_size)


def quantize_torch(job: Job, steps: Steps, path):
    """Quantize the torch model and export it; returns (outputs, exported path or None, note)."""
    import nncf
    import torch
    import nncf.torch.quantization.extensions  # noqa: F401 - registers the loaders force_build uses
    with steps("extension build"):  # NNCF's C++ quantizer ops: JIT-compiled once (install_nncf.sh), then cached
        nncf.torch.force_build_cpu_extensions()
    with steps("calibration"):
        quantized = nncf.quantize(job.model(), nncf.Dataset(calibration_loader(job)),
                                  subset_size=len(job.calibration))
    outputs = torch_outputs(quantized, job)
    example = torch.from_numpy(job.calibration[:1])
    try:
        with steps("export"):
            stripped = nncf.strip(quantized, example_input=example)  # NNCF quantizers -> torch FakeQuantize
            torch.onnx.export(stripped, (example,), str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        shipped = onnx_outputs(path, job)
    except Exception as error:  # noqa: BLE001 - the sim is still measured without a shippable ONNX
        return outputs, None, f"no export: {type(error).__name__}: {error}"
    agree = int((shipped.argmax(1) == outputs.argmax(1)).sum())
    return outputs, path, (f"BatchNorm stays unfolded and in float (conv weights quantized before it); export: "
                           f"nncf.strip + torch.onnx.export(dynamo=False, opset 17), whose top-1 in onnxruntime "
                           f"agrees with the sim on {agree}/{len(outputs)}")


def quantize_onnx(job: Job, steps: Steps, path):
    """Quantize the FP32 ONNX model and save it; returns (outputs, exported path, note)."""
    import nncf
    import onnx
    model = onnx.load(str(job.fp32_onnx))
    name = model.graph.input[0].name
    dataset = nncf.Dataset(calibration_loader(job), lambda batch: {name: batch.numpy()})
    with steps("calibration"):
        quantized = nncf.quantize(model, dataset, subset_size=len(job.calibration))
    with steps("export"):
        onnx.save(quantized, str(path))
    return onnx_outputs(path, job), path, "export: onnx.save of nncf.quantize's QDQ model"


def main() -> None:
    args = parse_args(SETTINGS, __doc__)
    import nncf
    import torch
    torch.set_num_threads(2)
    job, steps = Job(args.job), Steps()
    args.out.mkdir(parents=True, exist_ok=True)
    run = quantize_torch if args.setting == "torch-w8a8" else quantize_onnx
    outputs, exported, note = run(job, steps, args.out / "model.qdq.onnx")
    write_result(args.out, tool="nncf", version=nncf.__version__, setting=args.setting, steps=steps,
                 outputs=outputs, exported=exported,
                 notes=f"{DEFAULTS}; subset_size={len(job.calibration)} images in batches of {job.batch_size}; "
                       f"{note}")


if __name__ == "__main__":
    main()
