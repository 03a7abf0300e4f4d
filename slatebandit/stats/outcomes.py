"""What slates led to, with 95% intervals: CTR, conversion rate and revenue per slate.

The unit is the slate, not the shown slot: a shopper who clicks one item of a slate is more
likely to click another, so the slots of one slate are not independent, while slates (nearly)
are. Per slate i we know n_i shown slots, c_i clicks, v_i conversions (purchases) and r_i
revenue (the sum of its rewards' money ``value``); ``Outcomes`` keeps their sums over a group
of slates and the sums of squares and products the intervals need, so groups add up
(``a + b``) and SQL can compute them in one pass (``logging.outcomes``).

- CTR = sum c / sum n and conversion rate = sum v / sum n are ratios of per-slate sums. Their
  standard error is the delta method's: with R the ratio, e_i = c_i - R n_i and S slates,
  se = sqrt(S / (S - 1) * sum e_i^2) / sum n (the ratio estimator's variance, as in Cochran,
  Sampling Techniques, chapter 6; the A/B report's older CTR uses the same, ``ratio_se``).
- Revenue per slate = sum r / S is a plain mean: se = sd(r) / sqrt(S).

Intervals are value +- 1.96 se (fixed-horizon, normal), cut to the values the figure can take
(a rate in [0, 1], revenue >= 0). With fewer than two slates there is no interval (None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

Z95 = 1.959964


def ratio_se(
    slates: int, ratio: float, sum_den2: float, sum_num2: float, sum_cross: float, den: float
) -> float:
    """The delta-method standard error of ``ratio`` = sum num / sum den over ``slates`` units,
    from the sums of den^2, num^2 and num * den; NaN with fewer than two units."""
    if slates < 2 or den <= 0:
        return math.nan
    residual = max(sum_num2 - 2 * ratio * sum_cross + ratio * ratio * sum_den2, 0.0)
    return math.sqrt(residual * slates / (slates - 1)) / den


@dataclass(frozen=True)
class Rate:
    """A figure and its 95% interval (None where it cannot be computed)."""

    value: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, value: float, se: float, low: float = 0.0, high: float = math.inf) -> Rate:
        """``value`` +- 1.96 ``se``, cut to [``low``, ``high``]."""
        if not math.isfinite(value):
            return cls(None, None, None)
        if not math.isfinite(se):
            return cls(value, None, None)
        return cls(value, max(low, value - Z95 * se), min(high, value + Z95 * se))

    def to_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class Outcomes:
    """Sums over a group of slates (see the module docstring); ``a + b`` merges two groups."""

    slates: int = 0
    shown: float = 0.0  # sum n
    clicks: float = 0.0  # sum c
    conversions: float = 0.0  # sum v
    revenue: float = 0.0  # sum r
    shown_sq: float = 0.0  # sum n^2
    clicks_sq: float = 0.0  # sum c^2
    conversions_sq: float = 0.0  # sum v^2
    revenue_sq: float = 0.0  # sum r^2
    shown_clicks: float = 0.0  # sum n c
    shown_conversions: float = 0.0  # sum n v

    def __add__(self, other: Outcomes) -> Outcomes:
        return Outcomes(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def ctr(self) -> Rate:
        """Clicks per shown slot."""
        return self._per_slot(self.clicks, self.clicks_sq, self.shown_clicks)

    def conversion_rate(self) -> Rate:
        """Conversions (purchases) per shown slot."""
        return self._per_slot(self.conversions, self.conversions_sq, self.shown_conversions)

    def revenue_per_slate(self) -> Rate:
        if not self.slates:
            return Rate(None, None, None)
        mean = self.revenue / self.slates
        se = math.nan
        if self.slates > 1:
            variance = max(self.revenue_sq - self.slates * mean * mean, 0.0) / (self.slates - 1)
            se = math.sqrt(variance / self.slates)
        return Rate.of(mean, se)

    def _per_slot(self, total: float, total_sq: float, cross: float) -> Rate:
        if self.shown <= 0:
            return Rate(None, None, None)
        rate = total / self.shown
        se = ratio_se(self.slates, rate, self.shown_sq, total_sq, cross, self.shown)
        return Rate.of(rate, se, high=1.0)

    def to_dict(self) -> dict[str, object]:
        """The counts, and each figure with its interval: ``{value, low, high}``."""
        return {
            "slates": self.slates,
            "shown": int(self.shown),
            "clicks": int(self.clicks),
            "conversions": int(self.conversions),
            "revenue": self.revenue,
            "ctr": self.ctr().to_dict(),
            "conversion_rate": self.conversion_rate().to_dict(),
            "revenue_per_slate": self.revenue_per_slate().to_dict(),
        }
