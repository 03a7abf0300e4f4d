"""The canary: the newest checkpoint serves a share of shoppers beside the champion, and a
confidence sequence decides, while it serves, whether it replaces the champion.

Who is in it: shoppers outside any running experiment whose bucket, a BLAKE2b hash of the
canary's id and their user id modulo 10,000, falls below ``share`` x 10,000. Every worker and
restart assigns a shopper the same way for the whole canary; the next canary (another id)
draws another group, so no shopper carries every new version. Its decisions are logged with
its version and arm ``canary``.

The rule (``CanaryRule.judge``), on the per-slot reward of each slate (its rewards over its
shown slots), canary minus champion over the slates both served since the canary started,
with the anytime-valid interval of ``stats.difference`` looked at every turn:

    reject   as soon as its upper bound < -margin x champion   (confidently worse by more
             than the margin)
    promote  as soon as its lower bound >= -margin x champion  (confidently no worse)
    at the budget of canary slates: reject if the sequence's upper bound, or the one-sided
             fixed-horizon bound (difference + 1.96 se), is below 0 (harm, if within the
             margin); else promote

So every canary ends in a verdict within ``budget`` canary slates (plus the reward wait). Both
sequence bounds come from one sequence that holds at every look with probability 0.95: it
rejects equal arms at most 2.5% of the time, however often the rule looks. The fixed-horizon
test is used once, at a look fixed in advance (the budget), where it is valid and a third
narrower than the sequence: it adds at most 2.5%, so equal arms are rejected at most 5% of the
time in all (3.2% measured), and it is what gives the short default budget its power.

Why a quarter of the shoppers and 300 canary slates, not a tenth and 500: the test's power
depends on the canary's slates; the share only sets how soon they come. At a share of 0.25 a
canary reaches its budget in 1,200 slates instead of 5,000, so the champion follows the
learner four times as closely, while a 30% worse canary is still rejected 98% of the time (and
one 50% worse always, after a median of 76 canary slates against 103 before): in the seeded
simulation (``benchmarks/sequential.py``) and in the learning curves (README, Measured).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from slatebandit.logging.releases import running_canary
from slatebandit.stats import Difference, Moments, difference

log = logging.getLogger(__name__)

BUCKETS = 10_000
# Each arm has this many slates before any verdict, so the sample variance has settled: at 50
# equal arms were rejected 0.75% of the time in the seeded simulation (benchmarks/sequential.py)
MIN_SLATES = 50
ARM = "canary"
Z_ONE_SIDED = 1.959964  # the one-sided 2.5% quantile of the normal: the budget's final test


def canary_bucket(canary_id: int, user_id: str) -> int:
    digest = hashlib.blake2b(f"canary-{canary_id}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def in_canary(canary_id: int, share: float, user_id: str) -> bool:
    return canary_bucket(canary_id, user_id) < round(share * BUCKETS)


@dataclass(frozen=True)
class Judgement:
    verdict: str | None  # "promote", "reject" ("rollback", "keep" for a recheck), or None
    reason: str
    interval: Difference
    threshold: float

    def figures(self) -> dict[str, object]:
        """The interval, the threshold, and the budget's one-sided fixed-horizon upper bound
        (``fixed_high``), so a verdict says which of the rule's tests decided it."""
        threshold = self.threshold if math.isfinite(self.threshold) else None
        fixed_high = self.interval.fixed_high(Z_ONE_SIDED)
        return {
            **self.interval.to_dict(),
            "threshold": threshold,
            "fixed_high": fixed_high if math.isfinite(fixed_high) else None,
        }


@dataclass(frozen=True)
class CanaryRule:
    """When a canary (treatment) is confidently worse, confidently no worse, or out of
    budget, against the champion (control). ``margin`` is relative to the champion's mean."""

    margin: float
    budget: int  # canary slates
    share: float
    alpha: float = 0.05
    min_slates: int = MIN_SLATES

    def __post_init__(self) -> None:
        if not 0 <= self.margin < 1:
            raise ValueError("margin must be in [0, 1)")
        if not 0 < self.share <= 0.5:
            raise ValueError("share must be in (0, 0.5]")
        if self.budget < self.min_slates:
            raise ValueError(f"budget must be at least min_slates ({self.min_slates})")

    @property
    def horizon(self) -> float:
        """Slates of both arms by the time the budget is spent: where the sequence is tightest."""
        return self.budget / self.share

    def judge(self, canary: Moments, champion: Moments) -> Judgement:
        """The canary against the champion: "reject" if it is confidently worse by more than
        the margin (or, at the budget, worse by the one fixed-horizon test), "promote" once it
        is confidently no worse or the budget is spent without evidence of harm."""
        names = ("canary", "champion", "the champion", "canary slates")
        return self._decide(canary, champion, canary.n, names, ("reject", "promote"))

    def recheck(self, champion: Moments, previous: Moments) -> Judgement:
        """A watch's second look: the champion against the version it replaced, served side
        by side now (``previous`` on the canary's share), so that a change in the shoppers
        moves both arms alike. "rollback" if the champion is confidently worse by more than
        the margin (or, at the budget of ``previous`` slates, worse by the one fixed-horizon
        test), "keep" once it is confidently no worse or the budget is spent."""
        names = ("champion", "the version before it beside it", "the version before it", "slates")
        return self._decide(champion, previous, previous.n, names, ("rollback", "keep"))

    def _decide(
        self,
        treated: Moments,
        reference: Moments,
        served: int,
        names: tuple[str, str, str, str],
        verdicts: tuple[str, str],
    ) -> Judgement:
        """``treated`` against ``reference``: the first verdict if confidently worse, the
        second if no worse; ``served`` counts the slates of the arm on the share, against the
        budget. ``names``: the two arms in the figures, the reference in the reason, and the
        budget's unit."""
        d = difference(treated, reference, self.alpha, self.horizon)
        threshold = -self.margin * abs(reference.mean)
        treated_name, reference_name, than, unit = names
        worse_verdict, fine_verdict = verdicts
        figures = (
            f"{treated_name} {treated.mean:.4f} ({treated.n} slates) vs {reference_name} "
            f"{reference.mean:.4f} ({reference.n}): difference "
            f"{d.estimate:+.4f}, anytime 95% [{d.low:+.4f}, {d.high:+.4f}], threshold "
            f"{threshold:+.4f}"
        )
        if min(treated.n, reference.n) < self.min_slates:
            return Judgement(None, f"collecting: {figures}", d, threshold)
        if d.high < threshold:
            why = f"confidently worse than {than} by more than {self.margin:.0%}"
            return Judgement(worse_verdict, f"{why}: {figures}", d, threshold)
        if d.low >= threshold:
            return Judgement(fine_verdict, f"confidently no worse: {figures}", d, threshold)
        if served >= self.budget:
            # One look, at a horizon fixed in advance: the fixed-horizon one-sided test is
            # valid here (2.5% for equal arms, on top of the sequence's 2.5% before), and its
            # interval is a third narrower than the sequence's, which at this budget raised
            # the power against a 30% worse canary from 85% to 95% (benchmarks/sequential.py).
            if d.high < 0 or d.fixed_high(Z_ONE_SIDED) < 0:
                why = f"budget of {self.budget} {unit} spent, confidently worse"
                return Judgement(worse_verdict, f"{why}: {figures}", d, threshold)
            why = f"budget of {self.budget} {unit} spent without evidence of harm"
            return Judgement(fine_verdict, f"{why}: {figures}", d, threshold)
        return Judgement(None, f"serving: {figures}", d, threshold)


@dataclass(frozen=True)
class Running:
    id: int
    version: int
    share: float

    def serves(self, user_id: str) -> bool:
        return in_canary(self.id, self.share, user_id)


class CanaryBook:
    """The running canary, as one serving process knows it; ``refresh`` re-reads it (every
    ``SLATEBANDIT_MODEL_POLL_SECONDS``) and has ``prepare`` load its model off the request path
    before any shopper is sent to it."""

    def __init__(
        self,
        engine: Engine,
        prepare: Callable[[str], object] | None = None,
        forget: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.prepare = prepare
        self.forget = forget  # called with an ended canary's spec, to free its model
        self.running: Running | None = None

    def refresh(self) -> None:
        with self.engine.connect() as conn:
            found = running_canary(conn)
        running = None if found is None else Running(found.id, found.version, found.share)
        if running is not None and running != self.running and self.prepare is not None:
            try:
                self.prepare(f"vw@{running.version}")
            except Exception:  # its shoppers get the champion meanwhile
                log.exception("canary %d: version %d cannot load", running.id, running.version)
                return
        ended, self.running = self.running, running
        if ended is not None and self.forget is not None:
            if running is None or ended.version != running.version:
                self.forget(f"vw@{ended.version}")
