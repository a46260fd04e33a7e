"""The allowed values of a numeric setting, shared by the run config and the generation settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric setting: [low, high], with either end open when marked so."""

    low: float
    high: float
    note: str = ""
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        """Whether ``value`` lies in the range (an open end excluded)."""
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}{')' if self.high_open else ']'}"


def num(x: float) -> str:
    """A number as a person writes it: 2, 0.5."""
    return str(int(x)) if float(x).is_integer() else str(x)

