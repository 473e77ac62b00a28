"""The fidelity zoo: models written the ways people write them, each checked on every output against
onnxruntime running the exported QDQ file, for both CPU kinds: the sim predicting this machine's
kernels against the optimised session (its integer kernels), and the sim predicting exact int32 sums
(VNNI) against the unoptimised one, which runs float kernels between Q/DQ pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lowbit
from lowbit.fidelity import output_arrays, output_lsbs
from lowbit.runtime import run, session

from fidelity_zoo_models import ZOO, build

GOAL = 0.995


def _batches(inputs, size=16):
    if isinstance(inputs, tuple):
        return list(zip(*(part.split(size) for part in inputs)))
    return list(inputs.split(size))


def _call(sim, batch):
    return sim(*batch) if isinstance(batch, tuple) else sim(batch)


def _compare(sim, path, batches, optimize: bool) -> list[tuple[float, float, int]]:
    """Per output: (argmax agreement, max error in LSB, rank), sim vs onnxruntime."""
    host = sim.runtime
    sim.runtime = host if optimize else "onnxruntime-cpu-vnni"
    with torch.no_grad():
        simulated = [output_arrays(_call(sim, b)) for b in batches]
    sim.runtime = host
    runtime = session(path, threads=2, optimize=optimize)
    executed = [run(runtime, b) for b in batches]
    results = []
    for index, lsb in enumerate(output_lsbs(sim)):
        ours = np.concatenate([s[index] for s in simulated]).astype(np.float64)
        theirs = np.concatenate([e[index] for e in executed]).astype(np.float64)
        assert ours.shape == theirs.shape
        assert lsb == lsb and lsb > 0, f"output {index} is not quantized"
        flat_ours, flat_theirs = ours.reshape(len(ours), -1), theirs.reshape(len(theirs), -1)
        agreement = float((flat_ours.argmax(1) == flat_theirs.argmax(1)).mean())
        results.append((agreement, float(np.abs(ours - theirs).max()) / lsb, theirs.ndim))
    return results


@pytest.mark.parametrize("act_bits", [8, 4])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_sim_matches_onnxruntime_on_every_output(name, act_bits, tmp_path):
    """At 4 bits the activations' grids are narrower than the uint8/int8 the file stores them in: the export's
    Clip after each such pair keeps the runtime on the sim's grid. Argmax agreement is checked at 8 bits only:
    16-level outputs tie so often that a one-step difference (float-computed layers) moves the first maximum."""
    model, inputs = build(name)
    batches = _batches(inputs)
    sim = lowbit.quantize(model, batches, act_bits=act_bits)
    weights = sum(1 for p in model.parameters() if p.dim() >= 2)
    assert sim.summary()["quantizers"]["weight"] == weights, sim.summary()
    paths = sim.export(tmp_path, name=name)
    for optimize in (True, False):
        for index, (agreement, error_lsb, rank) in enumerate(_compare(sim, paths.qdq_onnx, batches, optimize)):
            where = f"{name} output {index} (act_bits={act_bits}, optimize={optimize})"
            print(f"\n{where}: agreement {agreement:.2%}, max error {error_lsb:.2f} LSB")
            assert error_lsb <= 1.0001, where
            if rank == 2 and act_bits == 8:
                assert agreement >= GOAL, where


@pytest.mark.parametrize("name, axis", [("two_head_detector", 2), ("two_head_detector", 3), ("decoder", 3),
                                        ("audio_conv1d", 2), ("attention", 1), ("token_linear", 1)])
def test_export_keeps_the_axes_the_model_runs_at_any_size(name, axis, tmp_path):
    """A fully convolutional detector runs at any image size, a token model at any sequence length: so do
    their exports, computing what the sim computes at that size."""
    model, inputs = build(name)
    batches = _batches(inputs)
    sim = lowbit.quantize(model, batches)
    paths = sim.export(tmp_path, name=name)
    larger = torch.cat([inputs[:8]] * 2, axis)
    with torch.no_grad():
        simulated = output_arrays(sim(larger))
    executed = run(session(paths.qdq_onnx, threads=2), larger)
    for ours, theirs, lsb in zip(simulated, executed, output_lsbs(sim)):
        assert ours.shape == theirs.shape
        assert float(np.abs(ours - theirs).max()) <= lsb * 1.0001


@pytest.mark.parametrize("name, expected", [("attention", {"Gemm": 5, "MatMul": 2}), ("two_head_detector", {}),
                                            ("same_conv", {"Gemm": 1})])
def test_summary_names_the_integer_kernels_simulated_in_float(name, expected):
    """Convolutions are emulated as onnxruntime's integer kernels; Linear layers and matmuls of two
    quantized tensors are computed in float (the zoo shows them within one step) and listed as such."""
    model, inputs = build(name)
    sim = lowbit.quantize(model, _batches(inputs))
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert expected.get("Gemm", 0) == linears
    assert sim.summary()["float_simulated"] == expected
