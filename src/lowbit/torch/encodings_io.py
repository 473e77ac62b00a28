"""Load an AIMET encodings file into a QuantSim, matching names through the exported graph."""

from __future__ import annotations

from lowbit.quant.apply_encodings import apply_encodings_file
from lowbit.quant.encoding import Encoding
from lowbit.quant.encodings_file import read_encodings


def tensor_names(sim) -> dict[str, str]:
    """Quantizer key → the tensor name its encoding has in the exported ONNX graph."""
    if getattr(sim, "tensor_names", None) is None:
        from lowbit.qdq.split import split_exported_graph
        from lowbit.torch.export import exported_onnx, parameter_renames
        for quantizer in sim.quantizers().values():
            if quantizer.encoding is None:
                quantizer.encoding = Encoding.from_range(quantizer.spec, -1.0, 1.0) if quantizer.spec.axis is None \
                    else _placeholder(sim, quantizer)
        exported = exported_onnx(sim)
        split = split_exported_graph(exported, sim.quantizers(), parameter_renames(sim.model))
        sim.tensor_names = split.tensor_names
    return sim.tensor_names


def _placeholder(sim, quantizer) -> Encoding:
    """A throw-away per-channel encoding of the right shape, so the graph can be exported for names."""
    key = next(k for k, q in sim.quantizers().items() if q is quantizer)
    weight = sim.model.get_submodule(sim.point(key).module).layer.weight
    channels = weight.shape[quantizer.spec.axis]
    return Encoding.from_range(quantizer.spec, -weight.new_ones(channels), weight.new_ones(channels))


def apply_encodings(sim, path) -> None:
    """Set every quantizer's encoding from the file; EncodingsFileError on names that do not match."""
    apply_encodings_file(sim.quantizers(), tensor_names(sim), read_encodings(path), path)
