"""Quantizer: an nn.Module that observes ranges while calibrating, then fake-quantizes."""

from __future__ import annotations

import functools
import math
import weakref

import torch
from torch import nn

from lowbit.errors import NotCalibratedError, SpecError
from lowbit.quant.encoding import Encoding
from lowbit.quant.fake_quant import fake_quantize, fake_quantize_dividing, per_tensor_grid
from lowbit.quant.grid_bounds import keep_grid_within
from lowbit.quant.layout import encoding_shape
from lowbit.quant.lsq import PerTensorLSQ
from lowbit.quant.range_estimators import RangeEstimator, make_estimator
from lowbit.quant.spec import QuantSpec


def fast_path_allowed() -> bool:
    """Whether grids may be handed from kernel to kernel and integer forms cached: in eager mode, not
    while exporting, tracing or compiling (those see the plain emulation, which computes the same values)."""
    return not (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling())


def _forget_grid(quantizer_ref: weakref.ref, marked: weakref.ref) -> None:
    """Drop a quantizer's grid record once the tensor it describes is gone."""
    quantizer = quantizer_ref()
    if quantizer is not None and quantizer.__dict__.get("_on_grid", (None,))[0] is marked:
        del quantizer.__dict__["_on_grid"]


class Quantizer(nn.Module):
    """Holds a spec and (once calibrated) an encoding; ``mode`` decides what forward does.
    Modes: ``"calibrate"`` observes and passes values through, ``"quantize"`` fake-quantizes, ``"off"`` passes through.
    ``divide=True`` rounds x / scale (as runtimes quantize float tensors) instead of torch's x · (1 / scale)."""

    def __init__(self, spec: QuantSpec, scheme: str = "minmax", divide: bool = False):
        super().__init__()
        self.spec = spec
        self.scheme = scheme
        self.divide = divide
        self.mode = "off"
        self.frozen_by: str | None = None
        self.batched = False
        self.bounds: tuple[float, float] | None = None
        self.estimator: RangeEstimator | None = None
        self.register_buffer("scale", torch.empty(0))
        self.register_buffer("offset", torch.empty(0, dtype=torch.int64))

    @property
    def encoding(self) -> Encoding | None:
        """The current encoding, or None before calibration (while learning: the learned values)."""
        if self.scale.numel() == 0:
            return None
        if self.learning:
            self._follow_learned()
        return Encoding(self.spec, self.scale, self.offset)

    @encoding.setter
    def encoding(self, encoding: Encoding) -> None:
        device = self.scale.device
        self.spec = encoding.spec
        self.scale = encoding.scale.detach().to(device, torch.float32).clone()
        self.offset = encoding.offset.detach().to(device, torch.int64).clone()
        if self.learning:
            self.learn_ranges(batched=self.batched, bounds=self.bounds)

    def forget_encoding(self) -> None:
        """No encoding any more (as before calibration) and nothing learned; the quantizer passes values through."""
        self.learn_ranges(False)
        self.scale = torch.empty(0, device=self.scale.device)
        self.offset = torch.empty(0, dtype=torch.int64, device=self.offset.device)
        self.mode, self.frozen_by = "off", None

    @property
    def learning(self) -> bool:
        """Whether scale (and, asymmetric, zero point) are trained: see :meth:`learn_ranges`."""
        return "learned_scale" in self._parameters

    def learn_ranges(self, enabled: bool = True, batched: bool = False,
                     bounds: tuple[float, float] | None = None) -> "Quantizer":
        """Make the encoding trainable, or (``enabled=False``) fixed again at its learned values. ``learned_scale``
        (asymmetric: also ``learned_zero_point``) train with LSQ/LSQ+ gradients (Esser et al. 2020) scaled by
        1/sqrt(values per scale · top grid index), values of one sample where ``batched`` (dim 0 is the batch); the
        encoding follows them (zero point rounded), so what the sim emulates and exports is what was trained.
        ``bounds``: the clip range of the activation quantized (ReLU: (0, inf)); the learned grid stays inside."""
        if self.learning:
            self._follow_learned()
        for name in ("learned_scale", "learned_zero_point"):
            self._parameters.pop(name, None)
        if not enabled:
            return self
        if self.encoding is None:
            raise NotCalibratedError("learn_ranges needs an encoding to start from: calibrate the sim first")
        if self.spec.block_size is not None:
            raise SpecError("learned ranges need per-tensor or per-channel encodings, not blockwise ones")
        self.learned_scale = nn.Parameter(self.scale.detach().clone())
        self.batched, self.bounds = batched, bounds
        if not self.spec.symmetric:
            self.learned_zero_point = nn.Parameter((-self.offset).detach().to(torch.float32).clone())
        return self

    def _follow_learned(self) -> None:
        """Copy the learned values into the encoding where they changed (zero point rounded, clamped)."""
        with torch.no_grad():
            if self.bounds is not None:
                keep_grid_within(self.learned_scale, self._parameters.get("learned_zero_point"), -self.offset,
                                 self.spec.levels - 1, self.bounds)
            scale = self.learned_scale.detach().clamp(min=1e-12)
            if not torch.equal(scale, self.scale):
                self.scale.copy_(scale)
            if "learned_zero_point" in self._parameters:
                offset = -self.learned_zero_point.detach().round().clamp(0, self.spec.levels - 1).to(torch.int64)
                if not torch.equal(offset, self.offset):
                    self.offset.copy_(offset)

    def _learnable_fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Fake quantization with gradients to ``x``, the scale and the zero point (LSQ / LSQ+)."""
        top = self.spec.levels - 1
        learned = "learned_zero_point" in self._parameters
        zero_point = self.learned_zero_point if learned else (-self.offset).to(torch.float32)
        values = x.numel() / (1 if self.spec.axis is None else self.scale.numel())
        if self.batched and x.dim() > 1:
            values /= x.shape[0]
        factor = 1.0 / math.sqrt(values * top)
        if self.spec.axis is None and x.dtype == torch.float32:
            return PerTensorLSQ.apply(x, self.learned_scale, self.learned_zero_point if learned else None,
                                      int(-self.offset), self.spec.qmin, top, factor)
        bottom = self.spec.qmin  # torch's kernels want the grid to start at 0: the same grid, shifted by its start
        if self.spec.axis is None:
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, self.learned_scale.reshape(1), zero_point.reshape(1) - bottom, 0, top - bottom, factor)
        return torch._fake_quantize_learnable_per_channel_affine(
            x, self.learned_scale.reshape(-1), zero_point.reshape(-1) - bottom, self.spec.axis % x.dim(), 0,
            top - bottom, factor)

    @property
    def frozen(self) -> bool:
        """Whether a technique chose this encoding (``frozen_by`` names it) and calibration keeps it."""
        return self.frozen_by is not None

    def freeze(self, encoding: Encoding, by: str) -> None:
        """Set ``encoding`` and keep it: weight calibration no longer recomputes it.
        ``by`` names the technique that chose it ("adaround", "sequential_mse"); later techniques follow their rules."""
        self.encoding = encoding
        self.frozen_by = by
        self.mode = "quantize"

    def start_calibration(self) -> None:
        """Forget the previous statistics and observe the next batches."""
        self.estimator = make_estimator(self.scheme, self.spec)
        self.mode = "calibrate"

    def finish_calibration(self, shape: torch.Size | None = None,
                           constraints: tuple[float, float] | None = None) -> None:
        """Turn the observed range (clamped to ``constraints`` if given) into the encoding and
        start fake-quantizing; ``shape`` is the tensor's shape for per-channel/per-block specs."""
        lo, hi = self.estimator.range()
        if constraints is not None:
            lo, hi = lo.clamp(min=constraints[0]), hi.clamp(max=constraints[1])
        if shape is not None or self.spec.axis is None:
            lo, hi = lo.reshape(encoding_shape(shape, self.spec)), hi.reshape(encoding_shape(shape, self.spec))
        self.encoding = Encoding.from_range(self.spec, lo, hi)
        self.estimator = None
        self.mode = "quantize"

    def require_encoding(self, name: str) -> Encoding:
        """The encoding, or a NotCalibratedError naming this quantizer."""
        if self.encoding is None:
            raise NotCalibratedError(f"quantizer {name!r} has no encoding: call sim.calibrate(data) first")
        return self.encoding

    def mark_on_grid(self, x: torch.Tensor, integers: torch.Tensor | None = None) -> None:
        """Note ``x`` was just computed on this grid: while unmodified and without gradient, forward returns it as is.
        ``integers`` (centred grid indices c, x = c · scale) live as long as ``x``, so kernels skip round(x / scale)."""
        marked = weakref.ref(x, functools.partial(_forget_grid, weakref.ref(self)))
        self._on_grid = (marked, x._version, integers, self.scale)

    def __getstate__(self):
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state.pop("_on_grid", None)  # a weak reference to a transient tensor
        return state

    def _is_on_grid(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is the tensor last marked by :meth:`mark_on_grid`, unmodified since."""
        if not fast_path_allowed():
            return False
        marked = self.__dict__.get("_on_grid")
        return (marked is not None and marked[0]() is x and x._version == marked[1]
                and not (torch.is_grad_enabled() and x.requires_grad))

    def grid_integers(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
        """round(x / scale) without computing it: the centred grid indices stored with ``x`` by
        :meth:`mark_on_grid`, when ``x`` is on this quantizer's grid and ``scale`` is its scale."""
        if self.mode != "quantize" or not self._is_on_grid(x):
            return None
        _, _, integers, marked_scale = self.__dict__["_on_grid"]
        if integers is None or marked_scale is not self.scale or not torch.equal(scale.reshape(()),
                                                                                 self.scale.reshape(())):
            return None
        return integers

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """What forward returns in ``"quantize"`` mode for an unmarked ``x`` (marks nothing)."""
        if self.divide and self.spec.axis is None:
            return fake_quantize_dividing(x, self.encoding)
        return fake_quantize(x, self.encoding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "quantize":
            if self.learning:
                self._follow_learned()
                if torch.is_grad_enabled():
                    return self._learnable_fake_quantize(x)
            if self._is_on_grid(x):
                return x
            if (not self.divide and self.spec.axis is None and x.dtype == torch.float32 and not torch.is_grad_enabled()
                    and fast_path_allowed() and self.scale.dim() == 0):
                integers = per_tensor_grid(x, self.encoding)
                output = torch.mul(integers, self.scale.reshape(()))
                self.mark_on_grid(output, integers)
                return output
            if (not self.divide and self.spec.axis is None and x.dtype == torch.float32 and torch.is_grad_enabled()
                    and x.requires_grad):  # training on fixed ranges: the same values, a faster kernel
                return PerTensorLSQ.apply(x, self.scale, None, int(-self.offset), self.spec.qmin, self.spec.qmax, 1.0)
            return self.fake_quantize(x)
        if self.mode == "calibrate" and x.is_floating_point():
            self.estimator.observe(x)
        return x

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, {self.spec.granularity}, symmetric={self.spec.symmetric}, mode={self.mode}"
