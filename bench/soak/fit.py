"""Least-squares line through a sampled series: does it grow, and how surely."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fit:
    """``value ≈ intercept + slope * minutes``; ``r2``: the share of variance explained."""

    slope_per_min: float
    intercept: float
    r2: float
    samples: int

    def growth(self, minutes: float) -> float:
        """What the line adds over ``minutes``."""
        return self.slope_per_min * minutes


def linear_fit(minutes: list[float], values: list[float]) -> Fit | None:
    """The fit of ``values`` against ``minutes`` (None with fewer than 3 points)."""
    n = len(values)
    if n != len(minutes):
        raise ValueError("minutes and values differ in length")
    if n < 3:
        return None
    mean_t = sum(minutes) / n
    mean_v = sum(values) / n
    stt = sum((t - mean_t) ** 2 for t in minutes)
    if stt == 0:
        return None
    stv = sum((t - mean_t) * (v - mean_v) for t, v in zip(minutes, values, strict=True))
    slope = stv / stt
    intercept = mean_v - slope * mean_t
    svv = sum((v - mean_v) ** 2 for v in values)
    # A flat series is explained perfectly by a flat line.
    r2 = 1.0 if svv == 0 else (stv * stv) / (stt * svv)
    return Fit(slope, intercept, r2, n)
