"""Load an AIMET encodings file into a QuantSim, matching names through the exported graph."""

from __future__ import annotations

from dataclasses import replace

from lowbit.errors import EncodingsFileError
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
    document = read_encodings(path)
    names = tensor_names(sim)
    known = set(names.values())
    unknown = [n for n in list(document.activation) + list(document.params) if n not in known]
    if unknown:
        raise EncodingsFileError(f"encodings file {path}: {len(unknown)} names are not in the model "
                                 f"(first: {unknown[0]!r})")
    missing = [k for k, n in names.items() if n not in document.activation and n not in document.params]
    if missing:
        raise EncodingsFileError(f"encodings file {path}: no encoding for {len(missing)} quantizers "
                                 f"(first: {names[missing[0]]!r})")
    for key, quantizer in sim.quantizers().items():
        name = names[key]
        loaded = document.params.get(name) or document.activation.get(name)
        spec = replace(quantizer.spec, bits=loaded.spec.bits, symmetric=loaded.spec.symmetric)
        expected = quantizer.scale.numel() if quantizer.encoding is not None else None
        if spec.axis is not None and expected and loaded.scale.numel() != expected:
            raise EncodingsFileError(f"encodings file {path}: {name!r} has {loaded.scale.numel()} scales, "
                                     f"the model needs {expected}")
        scale = loaded.scale.reshape(quantizer.scale.shape) if expected else loaded.scale.reshape(())
        offset = loaded.offset.reshape(scale.shape)
        quantizer.encoding = Encoding(spec, scale, offset)
        quantizer.mode = "quantize"
