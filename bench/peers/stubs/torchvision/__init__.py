"""A stand-in for torchvision in the AIMET peer venv (bench/peers/install_aimet.sh).

aimet-torch imports torchvision at import time, but the torchvision wheels available here are CUDA
builds that fail beside the CPU torch 2.13.0. This package holds only the names aimet_torch refers to;
the benchmark uses none of them, and each raises if called.
"""

__version__ = "0.0.0+stub"


def unavailable(name: str):
    """A callable standing for torchvision's ``name`` that raises when used."""
    def call(*args, **kwargs):
        raise NotImplementedError(f"torchvision.{name} is a stub in this venv (bench/peers/stubs)")
    return call


from . import datasets, ops, transforms  # noqa: E402  (they use unavailable)
