"""Off-policy estimators as streaming, mergeable accumulators.

Every estimator sees logged slots: the logging propensity ``p_log`` of the shown item, its
``reward``, and ``p_target``, the probability the evaluated policy gives that same item in that
slot given the context and the logged earlier slots (a conditional slot probability). With
w = p_target / p_log (optionally clipped at ``clip``):

    ips          sum w r / slots                    unbiased; variance grows with w
    snips        sum w r / sum w                    self-normalised: stays in the reward range
    dm           sum q_target / slots               the reward model's view of the target
    dr           sum [q_target + w (r - q_logged)] / slots
    cascade-ips  sum W r / slots,  W_j = w_1 ... w_j (the prefix product over the slate)
    cascade-dr   sum [W_j (r - q_logged) + W_{j-1} q_target] / slots   (Kiyohara et al. 2022)

``q_logged`` is the reward model's prediction for the shown item and ``q_target`` its expected
prediction under the target's pmf for the slot (for cascade-dr: the Q-function, this slot's
reward plus what is expected below it).

They estimate different things. The cascade estimators weigh a slot by the product over the
slots down to it, so they estimate what the target's own slates would earn: unbiased under the
cascade model (a slot's reward may depend on the items above it), and so also when it does not,
at the price of larger weights. The per-slot estimators weigh a slot by its own conditional
weight only, so slot j is credited with what the target would earn there *below the items the
logger chose*: the target's value exactly in slot 0, a blend of logger and target further down.
Their variance is far smaller, and they rank policies well when the target would rarely fill the
slots above differently; for the absolute value of a slate policy, trust the cascade ones.
Values are rewards per shown slot; formulas as in the Open Bandit Pipeline documentation
(Saito et al. 2021) and Kiyohara et al. (2022).

Each estimate is a ratio of sums over decisions, so it streams: ``add`` takes any number of
whole decisions (a decision's slots together, in slot order), ``a + b`` merges two partial
results, ``get`` gives the value with a 95% interval, from the Poisson bootstrap over
decisions (``Bootstrap``) or, without one, from the delta method (Gaussian).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from slatebandit.replay.bootstrap import Bootstrap


@dataclass(frozen=True)
class Estimate:
    estimator: str
    value: float
    ci_low: float
    ci_high: float
    ess: float  # effective sample size of the weights, (sum w)^2 / sum w^2, in slots
    max_weight: float
    slots: int
    se: float  # standard error from the delta method
    interval: str  # what ci_low and ci_high are: "bootstrap" (percentile) or "gaussian"
    gaussian_low: float  # the closed-form interval, value -/+ z * se, always given
    gaussian_high: float

    def as_dict(self) -> dict[str, float | str | None]:
        def number(x: float) -> float | None:
            return None if not np.isfinite(x) else float(x)

        return {
            "estimator": self.estimator,
            "value": number(self.value),
            "ci_low": number(self.ci_low),
            "ci_high": number(self.ci_high),
            "ess": number(self.ess),
            "max_weight": number(self.max_weight),
            "se": number(self.se),
            "interval": self.interval,
            "gaussian_low": number(self.gaussian_low),
            "gaussian_high": number(self.gaussian_high),
        }


class Estimator:
    """value = sum over decisions of ``num`` / sum of ``den``; subclasses say what they are."""

    name = ""
    uses_model = False  # needs q_logged and q_target

    def __init__(self, bootstrap: Bootstrap | None = None, *, clip: float | None = None) -> None:
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        self.bootstrap = bootstrap
        self.clip = clip
        replicates = 0 if bootstrap is None else bootstrap.replicates
        self.decisions = 0
        self.slots = 0
        # sums over decisions of num, den, num^2, den^2, num*den (for the delta method)
        self.moments = np.zeros(5)
        self.weight_sum = 0.0
        self.weight_squares = 0.0
        self.max_weight = 0.0
        self._replicates = np.zeros((replicates, 2))  # bootstrap sums of num and den

    @property
    def replicates(self) -> np.ndarray:
        """Per bootstrap replicate, the count-weighted sums of num and den."""
        if self.bootstrap is not None:
            self.bootstrap.flush()  # sums of the last decisions may still be waiting
        return self._replicates

    @property
    def label(self) -> str:
        return self.name if self.clip is None else f"clipped-{self.name}"

    def add(
        self,
        p_log: np.ndarray,
        reward: np.ndarray,
        p_target: np.ndarray,
        *,
        decision: np.ndarray | None = None,
        q_logged: np.ndarray | None = None,
        q_target: np.ndarray | None = None,
    ) -> None:
        """Add logged slots. ``decision`` (sorted ids, one per slot) groups them into decisions;
        without it each slot is a decision of its own."""
        p_log, reward, p_target = (
            np.asarray(a, dtype=np.float64) for a in (p_log, reward, p_target)
        )
        n = len(p_log)
        _check(len(reward) == n and len(p_target) == n, "reward, p_target", "same length as p_log")
        _check(bool(np.all((p_log > 0) & (p_log <= 1))), "p_log", "must be in (0, 1]")
        _check(bool(np.all((p_target >= 0) & (p_target <= 1))), "p_target", "must be in [0, 1]")
        _check(bool(np.all(np.isfinite(reward))), "reward", "must be finite")
        if decision is None:
            decision = np.arange(self.decisions, self.decisions + n)
        decision = np.asarray(decision, dtype=np.int64)
        _check(len(decision) == n, "decision", "same length as p_log")
        _check(bool(np.all(np.diff(decision) >= 0)), "decision", "must be sorted: slots grouped")
        if self.uses_model:
            _check(q_logged is not None and q_target is not None, "q_logged, q_target", "required")
            q_logged = np.asarray(q_logged, dtype=np.float64)
            q_target = np.asarray(q_target, dtype=np.float64)
        if n == 0:
            return
        starts = np.flatnonzero(np.r_[True, decision[1:] != decision[:-1]])
        weight = p_target / p_log
        num, den, used = self._terms(weight, reward, starts, q_logged, q_target)
        num_d, den_d = np.add.reduceat(num, starts), np.add.reduceat(den, starts)
        self.decisions += len(starts)
        self.slots += n
        self.moments += [
            num_d.sum(),
            den_d.sum(),
            (num_d**2).sum(),
            (den_d**2).sum(),
            (num_d * den_d).sum(),
        ]
        self.weight_sum += float(used.sum())
        self.weight_squares += float((used**2).sum())
        self.max_weight = max(self.max_weight, float(used.max()))
        if len(self._replicates):
            assert self.bootstrap is not None
            self.bootstrap.add_totals(
                decision[starts], np.column_stack([num_d, den_d]), self._replicates
            )

    def _clip(self, weight: np.ndarray) -> np.ndarray:
        return weight if self.clip is None else np.minimum(weight, self.clip)

    def _terms(
        self,
        weight: np.ndarray,
        reward: np.ndarray,
        starts: np.ndarray,
        q_logged: np.ndarray | None,
        q_target: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per slot: numerator, denominator and the importance weight the estimate used."""
        raise NotImplementedError

    def get(self, level: float = 0.95) -> Estimate:
        s_num, s_den, s_nn, s_dd, s_nd = self.moments
        value = s_num / s_den if s_den > 0 else float("nan")
        se = float("nan")
        if self.decisions > 1 and s_den > 0:
            # delta method for a ratio of sums: residuals num - value * den
            residual = max(s_nn - 2 * value * s_nd + value**2 * s_dd, 0.0)
            se = float(np.sqrt(residual * self.decisions / (self.decisions - 1)) / s_den)
        z = NormalDist().inv_cdf(1 - (1 - level) / 2)
        gaussian = (value - z * se, value + z * se)
        low, high, interval = gaussian[0], gaussian[1], "gaussian"
        if len(self.replicates):
            num, den = self.replicates[:, 0], self.replicates[:, 1]
            with np.errstate(invalid="ignore", divide="ignore"):
                values = np.where(den > 0, num / den, np.nan)
            low = high = float("nan")
            if np.isfinite(values).any():
                tail = (1 - level) / 2
                low, high = np.nanquantile(values, [tail, 1 - tail])
            interval = "bootstrap"
        ess = self.weight_sum**2 / self.weight_squares if self.weight_squares > 0 else 0.0
        return Estimate(
            self.label,
            float(value),
            float(low),
            float(high),
            ess,
            self.max_weight,
            self.slots,
            se,
            interval,
            float(gaussian[0]),
            float(gaussian[1]),
        )

    def __add__(self, other: Estimator) -> Estimator:
        if type(other) is not type(self) or other.clip != self.clip:
            raise TypeError(f"cannot merge {other.label} into {self.label}")
        if len(other.replicates) != len(self.replicates) or (
            self.bootstrap is not None
            and other.bootstrap is not None
            and self.bootstrap.seed != other.bootstrap.seed
        ):
            raise ValueError("cannot merge estimates made with different bootstraps")
        merged = copy.copy(self)
        merged.decisions = self.decisions + other.decisions
        merged.slots = self.slots + other.slots
        merged.moments = self.moments + other.moments
        merged.weight_sum = self.weight_sum + other.weight_sum
        merged.weight_squares = self.weight_squares + other.weight_squares
        merged.max_weight = max(self.max_weight, other.max_weight)
        merged._replicates = self.replicates + other.replicates
        return merged


class IPS(Estimator):
    name = "ips"

    def _terms(self, weight, reward, starts, q_logged, q_target):  # type: ignore[no-untyped-def]
        w = self._clip(weight)
        return w * reward, np.ones_like(w), w


class SNIPS(Estimator):
    name = "snips"

    def _terms(self, weight, reward, starts, q_logged, q_target):  # type: ignore[no-untyped-def]
        w = self._clip(weight)
        return w * reward, w, w


class DM(Estimator):
    name = "dm"
    uses_model = True

    def _terms(self, weight, reward, starts, q_logged, q_target):  # type: ignore[no-untyped-def]
        ones = np.ones_like(weight)
        return q_target, ones, ones


class DR(Estimator):
    name = "dr"
    uses_model = True

    def _terms(self, weight, reward, starts, q_logged, q_target):  # type: ignore[no-untyped-def]
        w = self._clip(weight)
        return q_target + w * (reward - q_logged), np.ones_like(w), w


def prefix_products(weight: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W_j = w_1 ... w_j within each decision, and W_{j-1} (1 at a decision's first slot)."""
    rank = np.arange(len(weight)) - np.repeat(starts, np.diff(np.r_[starts, len(weight)]))
    product = weight.copy()
    for r in range(1, int(rank.max()) + 1 if len(rank) else 0):
        at = np.flatnonzero(rank == r)
        product[at] = product[at - 1] * weight[at]
    before = np.ones_like(product)
    inner = np.flatnonzero(rank > 0)
    before[inner] = product[inner - 1]
    return product, before


class CascadeIPS(Estimator):
    name = "cascade-ips"

    def _terms(self, weight, reward, starts, q_logged, q_target):  # type: ignore[no-untyped-def]
        product, _ = prefix_products(weight, starts)
        product = self._clip(product)
        return product * reward, np.ones_like(product), product


class CascadeDR(Estimator):
    name = "cascade-dr"
    uses_model = True

    def _terms(self, weight, reward, starts, q_logged, q_target):  # type: ignore[no-untyped-def]
        product, before = prefix_products(weight, starts)
        product, before = self._clip(product), self._clip(before)
        return product * (reward - q_logged) + before * q_target, np.ones_like(product), product


ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls for cls in (IPS, SNIPS, DM, DR, CascadeIPS, CascadeDR)
}
DEFAULT_ESTIMATORS = ("ips", "snips", "dm", "dr", "cascade-ips", "cascade-dr")


def make_estimator(
    name: str, bootstrap: Bootstrap | None = None, clip: float | None = None
) -> Estimator:
    """``ips``, ``snips``, ... or ``clipped-NAME`` (weights capped at ``clip``)."""
    base = name.removeprefix("clipped-")
    if base not in ESTIMATORS or (base == "dm" and base != name):
        known = ", ".join([*ESTIMATORS, *(f"clipped-{n}" for n in ESTIMATORS if n != "dm")])
        raise ValueError(f"unknown estimator {name!r}; known: {known}")
    cls = ESTIMATORS[base]
    return cls(bootstrap, clip=clip if base != name else None)


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"`{field}` {message}")


def paired_difference(
    a: Estimator, b: Estimator, level: float = 0.95
) -> tuple[float, float, float]:
    """``a - b`` with a percentile interval, for two policies replayed on the same decisions
    with the same bootstrap: replicate r of each saw the same resampled decisions, so the
    interval of the difference is much tighter than the two intervals side by side."""
    if not len(a.replicates) or len(a.replicates) != len(b.replicates):
        raise ValueError("paired_difference needs two estimators with the same bootstrap")
    value = a.get().value - b.get().value
    with np.errstate(invalid="ignore", divide="ignore"):
        diffs = a.replicates[:, 0] / a.replicates[:, 1] - b.replicates[:, 0] / b.replicates[:, 1]
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) == 0:
        return value, float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return value, float(low), float(high)
