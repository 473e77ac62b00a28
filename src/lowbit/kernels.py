"""Which runtime's integer kernels a sim predicts (per sim, by default this CPU's onnxruntime): onnxruntime's u8×s8
kernels on x86 without VNNI add product pairs in saturating int16; with VNNI or AMX, and off x86, the int32 sums are
exact. LiteRT's default CPU kernels (XNNPACK) requantize convolutions as onnxruntime does and add in fixed point."""

from __future__ import annotations

import functools
import math
import platform
from dataclasses import dataclass

from lowbit.errors import SpecError


@dataclass(frozen=True)
class Kernels:
    """A runtime's integer kernels as far as they change results: ``int16_pairs`` when u8×s8 products
    are added in saturating int16 pairs before the int32 accumulation, ``fixed_point_add`` when an addition
    requantizes with integer multipliers and a rounding shift (XNNPACK) rather than in float32, ``table_softmax``
    when a softmax between quantizers runs from a table of exponentials (onnxruntime's QLinearSoftmax) rather than
    in float before quantizing (LiteRT, as lowbit's .tflite files hold it)."""

    name: str
    int16_pairs: bool
    description: str
    fixed_point_add: bool = False
    table_softmax: bool = True


KERNELS = {k.name: k for k in (
    Kernels("onnxruntime-cpu-vnni", False, "onnxruntime on CPUs with VNNI or AMX, or not x86: exact int32 sums"),
    Kernels("onnxruntime-cpu-avx2", True, "onnxruntime on x86 CPUs without VNNI: u8×s8 pairs saturate in int16"),
    Kernels("litert-cpu", False, "LiteRT's default CPU kernels (XNNPACK): additions in fixed point", True, False),
)}


ADD_MULTIPLIER_BITS = 20
"""XNNPACK's fixed-point addition puts the larger input-to-output scale ratio's leading bit at 2**20."""


def fixed_point_add_parameters(a_ratio: float, b_ratio: float) -> tuple[int, float, float]:
    """(shift, a multiplier, b multiplier) of XNNPACK's addition for float32 scale ratios sa/sc, sb/sc: each ratio times
    2**shift rounded half to even, so out = floor((Σ centred input × multiplier + 2**(shift−1)) / 2**shift)."""
    shift = ADD_MULTIPLIER_BITS - (math.frexp(max(a_ratio, b_ratio))[1] - 1)
    return shift, float(round(a_ratio * 2.0 ** shift)), float(round(b_ratio * 2.0 ** shift))


def host_kernels() -> Kernels:
    """The kernels onnxruntime runs on this machine."""
    return KERNELS["onnxruntime-cpu-avx2" if _x86_without_vnni() else "onnxruntime-cpu-vnni"]


def resolve_kernels(runtime: str | Kernels | None) -> Kernels:
    """``runtime`` as Kernels: None is this machine's; a name must be one of KERNELS (SpecError)."""
    if runtime is None:
        return host_kernels()
    if isinstance(runtime, Kernels):
        return runtime
    if runtime not in KERNELS:
        raise SpecError(f"unknown runtime {runtime!r}; choose from {', '.join(KERNELS)} (default: this machine's)")
    return KERNELS[runtime]


@functools.cache
def _x86_without_vnni() -> bool:
    """This machine is x86 without avx512_vnni, avx_vnni or amx_int8 (read from /proc/cpuinfo)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)
