"""The `lowbit` command: `quantize` a model on your data, train it with `qat`, `compress` it, `analyze` where it
loses accuracy, `autoquant` it to an accuracy target, or run the `demo`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lowbit.errors import InputError, LowbitError, first_line


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lowbit")
def cli() -> None:
    """Quantize PyTorch models and export int8 ONNX for onnxruntime."""


def _combined(*decorators):
    """One decorator applying ``decorators`` as if stacked in the order given."""
    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply


_target_options = _combined(
    click.option("--target", default="default", show_default=True, help="Target preset name or a target JSON file."),
    click.option("--weights", "param_bits", type=int, default=None, help="Weight bitwidth [default: the target's]."),
    click.option("--activations", "act_bits", type=int, default=None,
                 help="Activation bitwidth [default: the target's]."))
_scheme_option = click.option("--scheme", type=click.Choice(["minmax", "mean_minmax", "percentile", "sqnr", "entropy"]),
                              default="minmax", show_default=True, help="How activation ranges are chosen.")


def _load(model: str, data_path, target: str, batch_size: int, input_shape=None, eval_fn: str | None = None):
    """Check --input-shape and --target, then (model, batches, eval function): ONNX files stay paths, others load."""
    import lowbit
    from lowbit.cli_data import parse_shape, read_data
    from lowbit.cli_inputs import import_attribute, load_model
    from lowbit.frontend import is_onnx_model
    from lowbit.keras import is_keras_model

    shape = parse_shape(input_shape)
    lowbit.load_target(target)
    batches = read_data(data_path, batch_size, model, shape)
    function = import_attribute(eval_fn, "--eval-fn") if eval_fn else None
    net = model if is_onnx_model(model) or is_keras_model(model) else load_model(model, batches[0])
    return net, batches, function


_data_option = click.option(
    "--data", "data_path", required=True, type=click.Path(path_type=Path),
    help="Image folder (jpg/png/bmp, for a model whose input is an image: ImageNet preprocessing, printed), a .npy "
         "array N x ..., a .pt tensor, or a .npz file / .pt dict of arrays keyed by input name (models with several "
         "inputs; 0-d arrays go to every batch).")
_out_option = click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
                           help="Folder for NAME.onnx, NAME.encodings and NAME.qdq.onnx.")
_input_shape_option = click.option(
    "--input-shape", default=None,
    help="Model input shape, any rank, e.g. 1,3,224,224 or 1,16000: images are resized to its H x W; array data is "
         "checked against it.")


_exporting_command = _combined(click.argument("model"), _data_option, _out_option, _target_options, _scheme_option)
"""MODEL, --data, --out, the target options and --scheme: what every command that exports takes."""

_torchscript_option = click.option(
    "--torchscript", is_flag=True,
    help="Also write NAME.torchscript.pt: the sim as TorchScript (torch.jit.load, no lowbit needed; PyTorch models).")


_tflite_option = click.option(
    "--tflite", is_flag=True,
    help="Also write NAME.tflite: int8 LiteRT, checked against the sim in LiteRT (predicted exactly with "
         "--runtime litert-cpu).")


def _export(sim, out_dir, name: str, batches, torchscript: bool, tflite: bool = False):
    """The three export files, verified on a few batches, and with ``torchscript`` / ``tflite`` the TorchScript or
    LiteRT file beside them (the LiteRT file's fidelity as a technique line)."""
    from lowbit.distributed import writes_files

    paths = sim.export(out_dir, name=name, verify=batches[:4])
    if torchscript and writes_files():
        sim.technique_results += (f"TorchScript: {sim.export_torchscript(Path(out_dir) / f'{name}.torchscript.pt')}",)
    if tflite and writes_files():
        written = sim.export_tflite(Path(out_dir) / f"{name}.tflite", verify=batches[:4])
        sim.technique_results += (f"LiteRT: {written.path} (sim vs LiteRT: {written.fidelity.row()})",)
    return paths


@cli.command()
@_exporting_command
@click.option("--batch-size", type=int, default=16, show_default=True, help="Samples per calibration batch.")
@click.option("--num-batches", type=int, default=None, help="Calibrate on at most this many batches.")
@click.option("--name", default="model", show_default=True, help="Base name of the exported files.")
@click.option("--techniques", default="", show_default=False,
              help="Comma-separated post-training techniques, applied in the recommended order: "
                   "equalize (before calibration); sequential_mse, adaround, bias_correction (after; "
                   "adaround and bias_correction exclude each other).")
@_input_shape_option
@_torchscript_option
@_tflite_option
@click.option("--runtime", type=click.Choice(["onnxruntime-cpu-avx2", "onnxruntime-cpu-vnni", "litert-cpu"]),
              default=None, help="Integer kernels the sim predicts: onnxruntime on x86 without VNNI (int16 pairs "
                                 "saturate) or with VNNI, or LiteRT's CPU kernels [default: this machine's onnxruntime].")
def quantize(model, data_path, out_dir, target, param_bits, act_bits, scheme, batch_size, num_batches, name,
             techniques, input_shape, torchscript, tflite, runtime) -> None:
    """Quantize MODEL on --data and export it to --out.

    MODEL is one of: a Python factory spec `module:factory` (the module is imported with the current
    directory on sys.path; factory() must return a torch.nn.Module), a TorchScript file (torch.jit.save),
    a torch.export file ending in `.pt2` (torch.export.save), an ONNX file ending in `.onnx`, or a Keras model
    (a `.keras` file or a TensorFlow SavedModel folder; NHWC images from an image folder).
    """
    import lowbit

    net, batches, _ = _load(model, data_path, target, batch_size, input_shape)
    sim = lowbit.quantize(net, batches, target=target, param_bits=param_bits, act_bits=act_bits, scheme=scheme,
                          num_batches=num_batches, techniques=[t for t in techniques.split(",") if t],
                          runtime=runtime)
    paths = _export(sim, out_dir, name, batches, torchscript, tflite)
    click.echo(_summary_table(sim, paths, batches[0]))


@cli.command()
@_exporting_command
@click.option("--steps", type=int, default=None, help="Training steps, one batch each per process [default: --epochs].")
@click.option("--epochs", type=int, default=1, show_default=True, help="Passes over --data when --steps is not given.")
@click.option("--lr", type=float, default=None, help="Adam's learning rate for the weights [default: 1e-5].")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Samples per batch and process.")
@click.option("--name", default="model", show_default=True, help="Base name of the exported files.")
@_input_shape_option
@_torchscript_option
def qat(model, data_path, out_dir, target, param_bits, act_bits, scheme, steps, epochs, lr, batch_size, name,
        input_shape, torchscript) -> None:
    """Quantize MODEL on --data, train it (quantization-aware, distilled from the float model: no labels) and
    export it to --out. Under `torchrun --nproc_per_node=N` each process takes every N-th batch and rank 0 writes.

    MODEL is a PyTorch model as for `lowbit quantize` (`module:factory`, TorchScript, `.pt2`).
    """
    import lowbit
    from lowbit.distributed import joined_from_environment, writes_files

    joined_from_environment()
    net, batches, _ = _load(model, data_path, target, batch_size, input_shape)
    sim = lowbit.quantize(net, batches, target=target, param_bits=param_bits, act_bits=act_bits, scheme=scheme)
    result = lowbit.qat(sim, batches, steps=steps, epochs=epochs, lr=lr)
    sim.technique_results += (str(result),)
    paths = _export(sim, out_dir, name, batches, torchscript)
    if writes_files():
        click.echo(_summary_table(sim, paths, batches[0]))


@cli.command()
@click.argument("model")
@_data_option
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for NAME.pt2, NAME.onnx and compression.html.")
@click.option("--macs", type=float, default=0.5, show_default=True, help="Fraction of the model's MACs to keep.")
@click.option("--methods", default="spatial_svd,channel_pruning", show_default=True,
              help="Comma-separated: spatial_svd, weight_svd, channel_pruning.")
@click.option("--fine-tune-steps", type=int, default=500, show_default=True, help="Distillation steps after.")
@click.option("--lr", type=float, default=None, help="Adam's learning rate for fine-tuning [default: 1e-5].")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Samples per batch.")
@click.option("--name", default="model", show_default=True, help="Base name of the written files.")
@_input_shape_option
def compress(model, data_path, out_dir, macs, methods, fine_tune_steps, lr, batch_size, name, input_shape) -> None:
    """Compress MODEL (a PyTorch model, as for `lowbit quantize`) to about --macs of its MACs on --data, fine-tune
    it by distillation, and write it to --out as NAME.pt2 and NAME.onnx with the report compression.html."""
    import lowbit
    from lowbit.compression.files import write_model_files
    from lowbit.frontend import is_onnx_model

    if is_onnx_model(model):
        raise InputError("compress takes a PyTorch model (module:factory, TorchScript or .pt2), not an ONNX file")
    net, batches, _ = _load(model, data_path, "default", batch_size, input_shape)
    result = lowbit.compress(net, batches, macs=macs, methods=tuple(m for m in methods.split(",") if m),
                             fine_tune_steps=fine_tune_steps, lr=lr, out_dir=out_dir)
    first = batches[0]
    paths = write_model_files(result.model, first[:2] if hasattr(first, "shape") else first, out_dir, name)
    click.echo(str(result))
    for path in (*paths, result.report_path):
        click.echo(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


def _summary_table(sim, paths, batch) -> str:
    """Markdown table of what was placed, how long calibration took, the files, their fidelity and
    onnxruntime's int8 vs FP32 latency on ``batch``."""
    from lowbit.speed import measure_speed

    speed = measure_speed(paths.onnx, paths.qdq_onnx, batch)
    summary = sim.summary()
    roles = ", ".join(f"{role} {count}" for role, count in sorted(summary["quantizers"].items()))
    rows = [("target", summary["target"]), ("runtime predicted", summary["runtime"]), ("quantizers placed", roles),
            ("capture mode", summary["capture"] + (f" ({summary['note']})" if summary["note"] else "")),
            ("calibration time", f"{sim.calibration_seconds:.2f} s")]
    rows += [("technique", line) for line in sim.technique_results]
    rows += [(f"file {p.name}", f"{p} ({p.stat().st_size / 1024:.1f} KiB)") for p in paths]
    fidelity, label = paths.fidelity, "fidelity (sim vs onnxruntime)"
    several = len(fidelity.outputs) > 1
    rows += [(label + (f", {output.name}" if several else ""), output.row()) for output in fidelity.outputs]
    if fidelity.note:
        rows.append(("fidelity note", fidelity.note))
    rows.append(("onnxruntime latency, one sample", speed.row()))
    return "\n".join(["| item | value |", "|---|---|"] + [f"| {key} | {value} |" for key, value in rows])


@cli.command()
@click.argument("model")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Image folder, .npy, .npz or .pt data (as for quantize).")
@click.option("--out", "out_dir", default="lowbit-report", show_default=True,
              type=click.Path(path_type=Path, file_okay=False), help="Folder for analysis.html.")
@_target_options
@_scheme_option
@click.option("--batch-size", type=int, default=16, show_default=True, help="Samples per batch.")
@click.option("--num-batches", type=int, default=None, help="Use at most this many batches.")
@click.option("--eval-fn", default=None,
              help="module:function called with the sim, returning a score (higher is better) "
                   "[default: top-1 agreement with the float model, or output SQNR if it is no classifier].")
def analyze(model, data_path, out_dir, target, param_bits, act_bits, scheme, batch_size, num_batches,
            eval_fn) -> None:
    """Per-layer sensitivity of MODEL (a module:factory spec, TorchScript, .pt2 or .onnx file) quantized
    on --data: which layers lose accuracy, weights or activations; writes an HTML report."""
    import torch

    import lowbit
    from lowbit.fidelity import output_arrays

    net, batches, function = _load(model, data_path, target, batch_size, eval_fn=eval_fn)
    sim = lowbit.quantize(net, batches, target=target, param_bits=param_bits, act_bits=act_bits, scheme=scheme,
                          num_batches=num_batches)
    with torch.no_grad():
        classifier = output_arrays(sim(batches[0]))[0].ndim == 2
    result = lowbit.analyze(sim, batches, eval_fn=function, out_dir=out_dir, num_batches=num_batches,
                            metric="agreement" if classifier else "sqnr")
    click.echo(_analysis_table(result))


@cli.command()
@click.argument("model")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Image folder, .npy, .npz or .pt data (as for quantize).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the exported files, autoquant.html and the resumable cache.")
@_target_options
@click.option("--target-drop", default="1%", show_default=True,
              help="Allowed drop of the score below the float model's: a percentage (1%) or a number (0.01).")
@click.option("--adaround-iterations", type=int, default=1000, show_default=True, help="AdaRound iterations.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Samples per batch.")
@click.option("--eval-fn", default=None,
              help="module:function called with the model or sim, returning a score (higher is better) "
                   "[default: top-1 agreement with the float model].")
def autoquant(model, data_path, out_dir, target, param_bits, act_bits, target_drop, adaround_iterations,
              batch_size, eval_fn) -> None:
    """Quantize MODEL (a module:factory spec, TorchScript, .pt2 or .onnx file) with as few techniques as
    it takes to stay within --target-drop of the float score; an interrupted run started again with the
    same arguments continues from its cache."""
    import lowbit

    drop = _parse_drop(target_drop)
    net, batches, function = _load(model, data_path, target, batch_size, eval_fn=eval_fn)
    result = lowbit.autoquant(net, batches, eval_fn=function, allowed_drop=drop, target=target,
                              param_bits=param_bits, act_bits=act_bits, out_dir=out_dir,
                              adaround_iterations=adaround_iterations)
    lines = ["| stage | score | meets target | seconds | what it chose |", "|---|---|---|---|---|"]
    for stage in result.stages:
        seconds = "cached" if stage.cached else f"{stage.seconds:.1f}"
        lines.append(f"| {stage.name} | {stage.score:.4g} | {'yes' if stage.score >= result.target else 'no'} | "
                     f"{seconds} | {stage.detail} |")
    lines += ["", str(result), *[f"file: {path}" for path in result.export_paths], f"report: {result.report_path}"]
    click.echo("\n".join(lines))


def _parse_drop(text: str) -> float:
    """`1%` → 0.01, `0.5` → 0.5; InputError for anything else."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise InputError(f"--target-drop {text!r} is not a number or a percentage such as 1%") from None
    if value < 0:
        raise InputError(f"--target-drop must not be negative, got {text!r}")
    return value


def _analysis_table(result) -> str:
    """Markdown table of the most sensitive layers, then the scores and the report's path."""
    lines = ["| layer | op | only this layer | all but this layer | weights only | activations only |",
             "|---|---|---|---|---|---|"]
    cell = lambda v: "" if v is None else f"{v:.4g}"
    for layer in result.layers[:10]:
        lines.append(f"| {layer.name} | {layer.op_type} | {cell(layer.only)} | {cell(layer.all_but)} | "
                     f"{cell(layer.weight_only)} | {cell(layer.activation_only)} |")
    lines += ["", f"{result.metric}: float {result.float_score:.4g}, quantized {result.quantized_score:.4g}; "
                  f"{len(result.layers)} layers in {result.seconds:.0f} s", f"report: {result.report_path}"]
    return "\n".join(lines)


@cli.command()
@click.option("--out", "out_dir", default="demo-out", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the exported MobileNetV2 files and results.json.")
@click.option("--calibration-images", type=int, default=64, show_default=True,
              help="Augmented calibration images (from scikit-image's photos).")
@click.option("--quick", is_flag=True, help="32 calibration images and fewer latency runs (for tests).")
def demo(out_dir, calibration_images, quick) -> None:
    """Quantize a pretrained MobileNetV2 to int8, compare FP32, sim and onnxruntime, time both ONNX files."""
    from lowbit.demo import run_demo
    run_demo(out_dir, calibration_images=32 if quick else calibration_images, quick=quick)


def main(argv: list[str] | None = None) -> None:
    """Run the command; a LowbitError becomes a one-line `error:` message and exit status 2."""
    try:
        cli.main(args=argv, prog_name="lowbit", standalone_mode=False)
    except LowbitError as error:
        click.echo(f"error: {first_line(error)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)


if __name__ == "__main__":  # `torchrun --nproc_per_node=N -m lowbit.cli qat ...`
    main()
