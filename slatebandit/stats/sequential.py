"""Anytime-valid confidence sequences for a mean and for a difference of two means.

A fixed-horizon 95% interval is valid once, at a sample size chosen in advance; looked at
after every batch it will, sooner or later, exclude the truth (peeking inflates the false
positive rate far above 5%). A confidence sequence (C_t) holds the truth at *every* t at once
with probability 1 - alpha, so a release or an analyst may look as often as they like and stop
the first time it excludes a value.

The boundary is the two-sided asymptotic confidence sequence of

    Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and
    asymptotic confidence sequences", Annals of Statistics (2024), arXiv:2103.06476,
    Theorem 2.2 (Robbins' normal mixture with an estimated variance):

    C_t = mean_t +- sigma_t * sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / alpha))

with rho^2 > 0 a tuning constant that makes the sequence tightest near t_opt units (their
Section B.2): rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / t_opt. Like the central limit
theorem it is asymptotic: it needs finite variance and enough units for the sample variance to
settle, not a bounded outcome. The margin shrinks like sqrt(log t / t), against a
fixed-horizon interval's 1.96 / sqrt(t): at t_opt it is about 1.55 times wider, the price of
looking every day.

A difference of two means from a randomised split (treatment share rho_hat = n_a / t) is the
mean of its influence function, whose variance is var_a / rho_hat + var_b / (1 - rho_hat)
(the paper's Section 3, with the difference in means as the estimator); so the same boundary
applies with t = n_a + n_b.

Moments are streaming and mergeable (``a + b``), as the replay estimators are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
Z95 = 1.959964


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (Welford / Chan et al.), mergeable."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: np.ndarray | list[float]) -> Moments:
        x = np.asarray(values, dtype=np.float64)
        if x.size == 0:
            return cls()
        mean = float(x.mean())
        return cls(int(x.size), mean, float(((x - mean) ** 2).sum()))

    def __add__(self, other: Moments) -> Moments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        return Moments(n, mean, self.m2 + other.m2 + delta * delta * self.n * other.n / n)

    @property
    def variance(self) -> float:
        """The sample variance (n - 1 in the denominator); NaN below two values."""
        return self.m2 / (self.n - 1) if self.n > 1 else math.nan

    def to_list(self) -> list[float]:
        return [self.n, self.mean, self.m2]

    @classmethod
    def from_list(cls, values: list[float] | None) -> Moments:
        if not values:
            return cls()
        n, mean, m2 = values
        return cls(int(n), float(mean), float(m2))


def best_rho2(t_opt: float, alpha: float = ALPHA) -> float:
    """The tuning constant that makes the sequence tightest at ``t_opt`` units."""
    if not t_opt > 0:
        raise ValueError("t_opt must be positive")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    a = -2.0 * math.log(alpha)
    return (a + math.log(a + 1.0)) / t_opt


def margin(t: float, alpha: float = ALPHA, t_opt: float = 10_000.0) -> float:
    """The boundary for unit variance after ``t`` units: C_t = mean +- sigma * margin."""
    if t < 1:
        return math.inf
    rho2 = best_rho2(t_opt, alpha)
    return math.sqrt(
        2.0 * (t * rho2 + 1.0) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1.0) / alpha)
    )


def anytime_halfwidth(se: float, n: int, alpha: float = ALPHA, t_opt: float = 10_000.0) -> float:
    """The confidence sequence's half-width for an estimate with standard error ``se`` over
    ``n`` units (se * sqrt(n) estimates sigma): to set beside a fixed-horizon ``1.96 * se``."""
    if not (n >= 2 and math.isfinite(se)):
        return math.inf
    return se * math.sqrt(n) * margin(n, alpha, t_opt)


@dataclass(frozen=True)
class Difference:
    """treatment - control, with its anytime-valid interval [low, high]."""

    estimate: float
    low: float
    high: float
    treatment: Moments
    control: Moments
    sigma: float  # the influence function's standard deviation

    def fixed_high(self, z: float) -> float:
        """The upper end of the fixed-horizon interval ``estimate + z * se``: valid at one
        look chosen in advance, never under continuous monitoring."""
        t = self.treatment.n + self.control.n
        return self.estimate + z * self.sigma / math.sqrt(t) if t else math.inf

    def to_dict(self) -> dict[str, float | int | None]:
        def finite(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "difference": finite(self.estimate),
            "low": finite(self.low),
            "high": finite(self.high),
            "treatment_units": self.treatment.n,
            "treatment_mean": finite(self.treatment.mean) if self.treatment.n else None,
            "control_units": self.control.n,
            "control_mean": finite(self.control.mean) if self.control.n else None,
        }


def difference(
    treatment: Moments, control: Moments, alpha: float = ALPHA, t_opt: float = 10_000.0
) -> Difference:
    """The confidence sequence on mean(treatment) - mean(control) after the units seen so far.

    Valid at every moment it is looked at (both arms growing in any interleaving of a
    randomised split); infinite until each arm has two units.
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    t = treatment.n + control.n
    estimate = treatment.mean - control.mean if treatment.n and control.n else math.nan
    if treatment.n < 2 or control.n < 2:
        return Difference(estimate, -math.inf, math.inf, treatment, control, math.nan)
    share = treatment.n / t
    # An arm with no spread yet (no click in any of its slates) would claim certainty; it
    # borrows the other arm's variance until it has some of its own.
    var_t = treatment.variance or control.variance
    var_c = control.variance or treatment.variance
    sigma = math.sqrt(var_t / share + var_c / (1.0 - share))
    width = sigma * margin(t, alpha, t_opt)
    return Difference(estimate, estimate - width, estimate + width, treatment, control, sigma)
