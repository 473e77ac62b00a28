"""Named intermediate tensors of one onnxruntime run, and what a sim's quantizers read and write."""

from __future__ import annotations

import onnx
import torch
from onnx import helper

from lowbit.quant.fake_quant import fake_quantize
from lowbit.runtime import session


def graph_values(model: onnx.ModelProto, names: list[str], feeds: dict, threads) -> dict[str, torch.Tensor]:
    """The named tensors of one onnxruntime run of ``model`` on ``feeds`` (made graph outputs)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    runtime = session(exposed.SerializeToString(), threads=threads)
    return {name: torch.from_numpy(value).float() for name, value in zip(names, runtime.run(names, feeds))}


def quantizer_values(sim, args, kwargs, keys) -> tuple[dict, dict]:
    """For each quantizer key: the float graph's value at its tensor (its weights before AdaRound or bias correction
    rewrote them), and the QDQ graph's value there on the quantizer's grid (the sim's quantized value), for one call."""
    tensors = {key: sim.point(key).tensor for key in keys}
    feeds = sim.inputs.feeds(args, kwargs)
    split = sim.split()
    names = sorted(set(tensors.values()))
    floats = graph_values(split.float_model if sim.float_model is None else sim.float_model, names, feeds, sim.threads)
    read = graph_values(split.qdq_model, names, feeds, sim.threads)
    quantizers = sim.quantizers()
    quantized = {key: fake_quantize(read[tensors[key]], quantizers[key].encoding)
                 if quantizers[key].mode == "quantize" else read[tensors[key]] for key in keys}
    return {key: floats[tensors[key]] for key in keys}, quantized
