"""Set quantizers' encodings from a read encodings file, matched by tensor name: shared by both front ends."""

from __future__ import annotations

from dataclasses import replace

from lowbit.errors import EncodingsFileError
from lowbit.quant.encoding import Encoding
from lowbit.quant.encodings_file import EncodingsFile


def apply_encodings_file(quantizers: dict, names: dict[str, str], document: EncodingsFile, source) -> None:
    """Give every quantizer (by key) the encoding the file holds for its tensor ``names[key]``;
    EncodingsFileError, naming ``source``, for names that do not match or per-channel counts that differ."""
    known = set(names.values())
    unknown = [n for n in [*document.activation, *document.params] if n not in known]
    if unknown:
        raise EncodingsFileError(f"encodings file {source}: {len(unknown)} names are not in the model "
                                 f"(first: {unknown[0]!r})")
    missing = [k for k, n in names.items() if n not in document.activation and n not in document.params]
    if missing:
        raise EncodingsFileError(f"encodings file {source}: no encoding for {len(missing)} quantizers "
                                 f"(first: {names[missing[0]]!r})")
    for key, quantizer in quantizers.items():
        name = names[key]
        loaded = document.params.get(name) or document.activation.get(name)
        spec = replace(quantizer.spec, bits=loaded.spec.bits, symmetric=loaded.spec.symmetric,
                       strict=quantizer.spec.strict and loaded.spec.symmetric)
        expected = quantizer.scale.numel() if quantizer.encoding is not None else None
        if spec.axis is not None and expected and loaded.scale.numel() != expected:
            raise EncodingsFileError(f"encodings file {source}: {name!r} has {loaded.scale.numel()} scales, "
                                     f"the model needs {expected}")
        shape = quantizer.scale.shape if expected else (() if spec.axis is None else loaded.scale.shape)
        scale = loaded.scale.reshape(shape)
        quantizer.encoding = Encoding(spec, scale, loaded.offset.reshape(scale.shape))
        quantizer.mode = "quantize"
