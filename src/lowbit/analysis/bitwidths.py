"""Per-layer bitwidths of a calibrated sim and their cost: BOPs (MACs × weight bits × activation bits) and weight
bytes; ranges come from one calibration per candidate, so scoring a configuration needs no new calibration."""

from __future__ import annotations

import dataclasses

from lowbit.analysis.layers import LayerGroup
from lowbit.analysis.observe import first_samples
from lowbit.quant.encoding import Encoding


class BitwidthSetter:
    """Sets (weight bits, activation bits) per layer group of ``sim``; after :meth:`calibrate_at`, weights use ranges
    calibrated at the layer's choice, activations those of the most precise candidate with the same activation bits."""

    def __init__(self, sim):
        self.sim = sim
        self.quantizers = sim.quantizers()
        self.calibrated: dict[tuple[int, int], dict[str, Encoding]] = {(0, 0): self._encodings()}

    def calibrate_at(self, groups: list[LayerGroup], candidates, batches) -> None:
        """Calibrate the sim on ``batches`` once per candidate, every layer at that candidate (a ranged
        estimator such as sqnr picks a different range per bitwidth), and keep those ranges for :meth:`apply`."""
        for bits in candidates:
            for group in groups:
                self.apply(group, bits)
            self.sim.calibrate(batches)
            self.calibrated[tuple(bits)] = self._encodings()

    def apply(self, group: LayerGroup, bits: tuple[int, int]) -> None:
        weight_bits, activation_bits = bits
        for key in group.weights:
            if not self.quantizers[key].frozen:
                self._set(key, weight_bits, self._source(0, weight_bits))
        for key in group.activations:
            self._set(key, activation_bits, self._source(1, activation_bits))
        self.sim.encodings_changed()

    def restore(self) -> None:
        """Every quantizer back to the encoding it had before this setter changed it."""
        for key, encoding in self.calibrated[(0, 0)].items():
            self.quantizers[key].encoding = encoding
        self.sim.encodings_changed()

    def _encodings(self) -> dict[str, Encoding]:
        return {key: q.encoding for key, q in self.quantizers.items()}

    def _source(self, role: int, bits: int) -> dict[str, Encoding]:
        """The ranges calibrated at the most precise candidate whose weight (``role`` 0) or activation
        (1) bits are ``bits``; else the sim's own. Weight ranges depend on the weight bits alone."""
        same = [c for c in self.calibrated if c[role] == bits]
        return self.calibrated[max(same, key=lambda c: c[0] * c[1])] if same else self.calibrated[(0, 0)]

    def _set(self, key: str, bits: int, ranges: dict[str, Encoding]) -> None:
        """The encoding calibrated at ``bits`` as it is; another one's range on the new grid (re-deriving an
        encoding from its own grid's ends would widen a symmetric one by 2^(b-1) / (2^(b-1) - 1))."""
        encoding = ranges[key]
        if encoding.spec.bits != bits:
            encoding = Encoding.from_range(dataclasses.replace(encoding.spec, bits=bits), encoding.min, encoding.max)
        self.quantizers[key].encoding = encoding


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """Per-sample multiply-accumulates, weight count and output elements of one layer group."""

    macs: int
    weights: int
    outputs: int

    def bops(self, bits: tuple[int, int]) -> int:
        """Bit operations: MACs × weight bits × activation bits (elementwise layers: outputs × bits)."""
        return self.macs * bits[0] * bits[1] if self.macs else self.outputs * bits[1]

    def weight_bytes(self, bits: tuple[int, int]) -> float:
        return self.weights * bits[0] / 8


def layer_costs(sim, groups: list[LayerGroup], call) -> dict[str, LayerCost]:
    """Costs per group, measured by running ``call``'s first sample through the sim."""
    measured = sim.layer_costs(groups, *first_samples(call, 1))
    return {name: LayerCost(*figures) for name, figures in measured.items()}
