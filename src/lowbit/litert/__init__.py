"""LiteRT (.tflite) export: the sim's encodings in LiteRT's int8 kernels, and running the file in LiteRT."""

from lowbit.litert.export import export_tflite
from lowbit.litert.run import LiteRtModel

__all__ = ["LiteRtModel", "export_tflite"]
