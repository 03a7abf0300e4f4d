"""Statistics shared by releases, experiments, replay and the summary: anytime-valid confidence
sequences, and what slates led to (CTR, conversion rate, revenue per slate) with intervals."""

from slatebandit.stats.outcomes import Outcomes, Rate, ratio_se
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
    "Outcomes",
    "Rate",
    "anytime_halfwidth",
    "best_rho2",
    "difference",
    "margin",
    "ratio_se",
]
