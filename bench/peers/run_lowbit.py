"""lowbit's runner: BN fold, QuantSim, calibration, techniques, export (NAME.qdq.onnx is what ships)."""

from __future__ import annotations

import copy

from runner_common import Job, Steps, parse_args, torch_outputs, write_result

# AdaRound iterations per block for the reduced settings (lowbit's default is 1000; bench_ptq.py found
# 250 block-wise already above the paper's 10 000-iteration layer recipe in agreement)
REDUCED_ITERATIONS = 250
REDUCED = {"adaround": {"num_iterations": REDUCED_ITERATIONS}}

# setting: (target, scheme, techniques[, options per technique]); equalize runs before the sim is
# built, the others after calibration
SETTINGS = {
    "w8a8-minmax": ("default", "minmax", ()),
    "w8a8-minmax-bias-correction": ("default", "minmax", ("bias_correction",)),
    "w8a8-sqnr": ("default", "sqnr", ()),
    "w8a8-percentile": ("default", "percentile", ()),
    "w8a8-mean-minmax": ("default", "mean_minmax", ()),
    "w8a8-mean-minmax-bias-correction": ("default", "mean_minmax", ("bias_correction",)),
    "w8a8-sqnr-equalize-bias-correction": ("default", "sqnr", ("equalize", "bias_correction")),
    "w8a8-mean-minmax-float-logits": ("default+float-logits", "mean_minmax", ()),
    "w8a8-mean-minmax-float-logits-bias-correction": ("default+float-logits", "mean_minmax", ("bias_correction",)),
    "w8a8-cpu-int8-minmax": ("cpu-int8", "minmax", ()),
    "w8a8-cpu-int8-mean-minmax-float-logits-bias-correction": ("cpu-int8+float-logits", "mean_minmax",
                                                              ("bias_correction",)),
    "w8a8-cpu-int8-mean-minmax-float-logits-sequential-mse-bias-correction": (
        "cpu-int8+float-logits", "mean_minmax", ("sequential_mse", "bias_correction")),
    "w8a8-cpu-int8-mean-minmax-float-logits-adaround-reduced-bias-correction": (
        "cpu-int8+float-logits", "mean_minmax", ("adaround", "bias_correction"), REDUCED),
    "w4a8-adaround": ("w4a8", "minmax", ("sequential_mse", "adaround")),
    "w4a8-adaround-reduced": ("w4a8", "minmax", ("sequential_mse", "adaround"), REDUCED),
}


def load(target: str):
    """A preset, or "PRESET+float-logits": the preset with the returned tensors left float (as NNCF places them)."""
    from lowbit.target import load_target
    preset, _, variant = target.partition("+")
    config = load_target(preset).to_json()
    if variant == "float-logits":
        config["model_output"] = {"is_output_quantized": "False"}
    return load_target(config)


def main() -> None:
    args = parse_args(tuple(SETTINGS), __doc__)
    import torch
    import lowbit
    torch.set_num_threads(2)
    job, steps = Job(args.job), Steps()
    target, scheme, techniques, *rest = SETTINGS[args.setting]
    options = rest[0] if rest else {}
    model = copy.deepcopy(job.model())
    calibration = job.torch_batches("calibration")
    with steps("fold"):
        folded = lowbit.fold_batchnorm(model, calibration[0][:1])
    if "equalize" in techniques:
        with steps("equalize"):
            model, _ = lowbit.equalize(model, calibration[0][:1])
    with steps("sim creation"):
        sim = lowbit.QuantSim(model, calibration[0][:1], target=load(target), scheme=scheme)
    with steps("calibration"):
        sim.calibrate(calibration)
    lines = [f"{len(folded)} BN folded"]
    for name in [t for t in techniques if t != "equalize"]:
        technique = {"sequential_mse": lowbit.sequential_mse, "adaround": lowbit.adaround,
                     "bias_correction": lowbit.correct_bias}[name]
        with steps(name.replace("_", " ")):
            lines.append(str(technique(sim, calibration, **options.get(name, {}))))
            if name != "bias_correction":  # it changes biases, not weight grids; ranges stay
                sim.calibrate(calibration)
    with steps("export"):
        paths = sim.export(args.out, "model")
    write_result(args.out, tool="lowbit", version=lowbit.__version__, setting=args.setting, steps=steps,
                 outputs=torch_outputs(sim, job), exported=paths.qdq_onnx, notes="; ".join(lines))


if __name__ == "__main__":
    main()
