"""How many AdaRound iterations per layer reach the paper's 10 000: layer reconstruction error.

On the W4A8 MobileNetV2 (256 calibration images), every ``--stride``-th weight layer is rounded
from the same cached rows (the calibrated sim's quantized inputs, float outputs) with each
iteration count; the figure is the layer's output MSE relative to nearest rounding, averaged over
the layers, and its excess over the 10 000-iteration result. The smallest count within 2 % of it
is lowbit's default (``lowbit.algorithms.adaround_rows.DEFAULT_ITERATIONS``); bench_ptq.py then checks the
whole model's agreement.

With ``--granularity block`` every ``--stride``-th graph block is rounded instead (block output MSE).

    .venv/bin/python bench/bench_adaround_iterations.py [--stride 6] [--iterations 250,500,1000,2000,10000]
    .venv/bin/python bench/bench_adaround_iterations.py --granularity block --stride 8 --iterations 500,1000,2000,10000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import torch  # noqa: E402

import lowbit  # noqa: E402
from lowbit.torch.adaround import _round_layer  # noqa: E402
from lowbit.algorithms.block_rounding import round_block  # noqa: E402
from lowbit.torch.graph_blocks import block_module  # noqa: E402
from lowbit.torch.layer_activation import following_activation  # noqa: E402
from lowbit.torch.layer_inputs import layer_inputs_for  # noqa: E402
from lowbit.zoo import pretrained_mobilenet_v2  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=6)
    parser.add_argument("--iterations", default="250,500,1000,2000,10000")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--granularity", choices=("layer", "block"), default="layer")
    args = parser.parse_args()
    counts = [int(n) for n in args.iterations.split(",")]
    _common.setup_threads()
    model = pretrained_mobilenet_v2().eval()
    calib = _common.calibration_batches(n_images=args.calibration_images)
    sim = lowbit.quantize(model, calib, target="w4a8")
    inputs = layer_inputs_for(sim, calib, None, None, "adaround")
    if args.granularity == "block":
        units = [("+".join(b.layers), b) for b in inputs.blocks(3)[::args.stride]]
    else:
        units = [(name, None) for name in inputs.layer_order()[::args.stride]]
    names = [name for name, _ in units]
    generator = torch.Generator().manual_seed(0)
    ratios = {n: [] for n in counts}
    seconds = {n: [] for n in counts}
    for name, block in units:
        wrappers = [sim.model.get_submodule(n) for n in (block.layers if block else (name,))]
        originals = [w.layer.weight.detach().clone() for w in wrappers]
        if block is None:
            activation = following_activation(sim.model, name) or torch.nn.Identity()
            collected = inputs.collect(name, 16384, 512 << 20, generator, "rows")
            run = lambda cache, count: _round_layer(name, wrappers[0], cache, activation, count, 1024, 1e-2,
                                                    0.01, 0.2, generator)
        else:
            collected = inputs.collect_block(block, 512 << 20, "samples")
            module = block_module(sim.model, block)
            run = lambda cache, count: round_block(name, module, wrappers, cache, count, 16, 1e-2, 0.01, 0.2,
                                                   generator)
        with collected as cache:
            for count in counts:
                start = time.perf_counter()
                _, nearest, rounded = run(cache, count)
                seconds[count].append(time.perf_counter() - start)
                ratios[count].append(rounded / nearest)
                with torch.no_grad():
                    for wrapper, original in zip(wrappers, originals):
                        wrapper.layer.weight.copy_(original)
                        wrapper.weight_quantizer.frozen_by = None
        print(name, " ".join(f"{n}:{r[-1]:.3f}" for n, r in ratios.items()), flush=True)
    reference = sum(ratios[max(counts)]) / len(names)
    rows, payload = [], {}
    for count in counts:
        mean = sum(ratios[count]) / len(names)
        payload[count] = {"mse_vs_nearest": mean, "excess_over_reference": mean / reference - 1,
                          "seconds_per_layer": sum(seconds[count]) / len(names)}
        rows.append([count, f"{mean:.3f}", f"{100 * (mean / reference - 1):+.1f} %",
                     f"{payload[count]['seconds_per_layer']:.1f}"])
    unit = args.granularity
    _common.print_table(["iterations", f"{unit} output MSE / nearest", f"vs {max(counts)} it", f"s per {unit}"], rows)
    output = "bench_adaround_iterations" + ("" if unit == "layer" else "_block")
    path = _common.write_results(output, {
        "model": "mobilenet_v2 W4A8", "granularity": unit, "calibration_images": args.calibration_images,
        "units": names,
        "iterations": payload})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
