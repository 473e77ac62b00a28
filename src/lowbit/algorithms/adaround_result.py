"""What AdaRound did, for either front end: one entry per rounded layer or block."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerRounding:
    """One rounded unit (a layer, or the layers of a block rounded together): iterations run, seconds,
    and the output MSE (on its cached rows or samples) of nearest rounding and of the rounding kept."""

    names: tuple[str, ...]
    iterations: int
    seconds: float
    nearest_mse: float
    rounded_mse: float

    @property
    def name(self) -> str:
        """The layer's name, or the block's layer names joined by "+"."""
        return "+".join(self.names)


@dataclass(frozen=True)
class AdaroundResult:
    """What ``adaround`` did: one entry per rounded layer or block, the skipped layers (name → why),
    total time."""

    layers: tuple[LayerRounding, ...]
    skipped: dict[str, str]
    seconds: float

    @property
    def mean_error_change(self) -> float:
        """Mean relative change of the units' output MSE against nearest rounding (−0.6 = −60 %)."""
        changes = [r.rounded_mse / r.nearest_mse - 1 for r in self.layers if r.nearest_mse > 0]
        return sum(changes) / len(changes) if changes else 0.0

    def __str__(self) -> str:
        skipped = "".join(f", skipped {name} ({reason})" for name, reason in self.skipped.items())
        count = sum(len(r.names) for r in self.layers)
        units = len(self.layers)
        blocks = "" if count == units else f" in {units} block{'' if units == 1 else 's'}"
        return (f"adaround: {count} layers{blocks}, {self.seconds:.0f} s, mean output MSE "
                f"{100 * self.mean_error_change:+.0f} % vs nearest rounding{skipped}")
