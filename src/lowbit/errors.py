"""Errors lowbit raises: one class per cause, all subclasses of LowbitError."""


class LowbitError(Exception):
    """Base class of every error lowbit raises on bad input."""


class ModelLoadError(LowbitError):
    """A model or weights file could not be read."""


class DataError(LowbitError):
    """Calibration or evaluation data is empty, malformed or not finite."""


class SpecError(LowbitError):
    """A quantization spec asks for something impossible (bitwidth, axis, block size)."""


class NotCalibratedError(LowbitError):
    """An encoding was needed before calibration produced one."""


class EncodingsFileError(LowbitError):
    """An encodings file is unreadable, malformed, or does not match the model."""


class GraphCaptureError(LowbitError):
    """The model could not be captured as a graph, and no fallback applies."""


class InputError(LowbitError):
    """An example or data input does not fit the model (shape, type, structure)."""


class ExportError(LowbitError):
    """The quantized model could not be exported."""


class TargetError(LowbitError):
    """A target description is unknown, unreadable or invalid."""


class OptimizationError(LowbitError):
    """A layer-wise optimisation (AdaRound) produced non-finite values."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty: how a
    third-party error is quoted in one-line lowbit errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
