"""onnxruntime's quantizer: quant_pre_process, then quantize_static (QDQ, per-channel weights) on the
FP32 ONNX model; its output model is both what ships and what is evaluated."""

from __future__ import annotations

from runner_common import Job, Steps, onnx_outputs, parse_args, write_result

# setting: (calibration method, reduce_range)
SETTINGS = {f"w8a8-{method.lower()}{'-reduce-range' if reduce else ''}": (method, reduce)
            for method in ("MinMax", "Entropy", "Percentile") for reduce in (False, True)}


class Reader:
    """onnxruntime's CalibrationDataReader protocol over the job's calibration batches."""

    def __init__(self, job: Job, name: str):
        self.items = iter([{name: b} for b in job.batches("calibration")])

    def get_next(self):
        return next(self.items, None)


def main() -> None:
    args = parse_args(tuple(SETTINGS), __doc__)
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    job, steps = Job(args.job), Steps()
    method, reduce_range = SETTINGS[args.setting]
    args.out.mkdir(parents=True, exist_ok=True)
    prepared, quantized = args.out / "prepared.onnx", args.out / "model.qdq.onnx"
    with steps("pre-process"):
        quant_pre_process(str(job.fp32_onnx), str(prepared), skip_symbolic_shape=True)
    name = onnx.load(str(prepared)).graph.input[0].name
    with steps("calibration + quantize"):
        quantize_static(str(prepared), str(quantized), Reader(job, name), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method))
    write_result(args.out, tool="onnxruntime", version=onnxruntime.__version__, setting=args.setting,
                 steps=steps, outputs=onnx_outputs(quantized, job), exported=quantized)


if __name__ == "__main__":
    main()
