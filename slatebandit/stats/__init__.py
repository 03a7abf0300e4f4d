"""Statistics shared by releases, experiments and replay: anytime-valid confidence sequences."""

from slatebandit.stats.sequential import (
    ALPHA,
    Difference,
    Moments,
    anytime_halfwidth,
    best_rho2,
    difference,
    margin,
)

__all__ = [
    "ALPHA",
    "Difference",
    "Moments",
    "anytime_halfwidth",
    "best_rho2",
    "difference",
    "margin",
]
