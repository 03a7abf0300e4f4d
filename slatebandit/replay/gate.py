"""The offline gate: replay a new model version against the champion on held-out decisions.

Releases (``replay.release``) use it as a guard before a canary (``guard``: reject only
confident harm); ``slatebandit models gate V`` runs ``judge``, the full verdict below, by hand.

With ``SLATEBANDIT_PROMOTION=gated`` the learner never learns every ``gate_holdout_every``-th
decision (by id), in any version. ``judge`` replays the champion
(``vw@C``) and the new version (``vw@V``) on the most recent of those held-out decisions that
the champion scored and whose rewards are in, with the same bootstrap, and looks at the paired
difference V - C:

    promote  if its lower 95% bound >= -MARGIN x value(C)
    keep V a challenger otherwise, while there are too few held-out decisions, or when the
             champion's decisions cannot tell (coverage, below)

Only decisions the champion scored: there the champion's weights are 1 and the challenger's
depend only on where it departs from the champion. Decisions of other loggers (an untrained
model before the first promotion, a ``popular`` arm) put weights of thousands on the few slots
where their exploration hit the target's favourite, and measured, left the effective sample
size at 2 to 4 of 4,000 slots.

Coverage: under the logger, the importance weights p_target / p_log average exactly 1 if the
logger can show everything the target would. Their realised mean (``coverage``) falls far below
1 when the target's choices are ones the logger almost never made: epsilon-greedy over 200
candidates gives each non-greedy one 0.05 / 200, so in a few thousand slots a challenger's
favourite items are simply never seen. Measured against the simulator's true click model, a
challenger 53% better than the champion had coverage 0.25 there, IPS saw a tenth of its value
and DR, with an item-mean reward model, put it 11% below the champion (DR now uses a reward
model that knows the context, ``replay.context_model``, trained on learned decisions only). Outside
[``gate_min_coverage``, 1 / ``gate_min_coverage``] (above: a few rare slots with enormous
weights dominate) the gate does not judge: the verdict says so, and the way to compare them
is an A/B experiment (an arm ``vw@V``) or an operator's promotion.

Every verdict and its figures go to ``model_gates`` (``slatebandit models gates``,
``GET /v1/models``). Replay scores the held-out decisions' logged candidates with each model,
through the slate builder with each decision's own layout and exploration (``replay.targets``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass

from sqlalchemy import Engine, func, select

from slatebandit.config import Settings
from slatebandit.logging import models
from slatebandit.logging.schema import decisions
from slatebandit.replay.context_model import ContextRewardModel
from slatebandit.replay.estimators import make_estimator, paired_difference
from slatebandit.replay.evaluate import ReplayOptions, replay
from slatebandit.replay.log import Window

log = logging.getLogger(__name__)
BOOTSTRAP = 500  # replicates: the 2.5% quantile of the difference rests on 12 of them


@dataclass(frozen=True)
class Verdict:
    version: int
    champion: int | None
    promoted: bool
    reason: str
    decisions: int = 0
    estimator: str = ""
    challenger_value: float | None = None
    champion_value: float | None = None
    difference: float | None = None
    low: float | None = None
    high: float | None = None
    threshold: float | None = None
    coverage: float | None = None  # the challenger's mean importance weight (1: fully seen)

    def details(self) -> dict[str, object]:
        """The figures, JSON-safe (no NaN: PostgreSQL's JSON refuses it)."""
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in asdict(self).items()
            if k not in ("version", "champion")
        }


def held_out_window(
    engine: Engine, settings: Settings, champion: int | None = None, now: float | None = None
) -> Window:
    """The most recent ``gate_decisions`` held-out decisions whose rewards are in (and that
    ``champion`` scored, if given)."""
    until = (time.time() if now is None else now) - settings.reward_wait
    empty = Window(until=until, after=0, through=0)
    window = dataclasses.replace(
        empty,
        every=settings.gate_holdout_every,
        model_version=champion,
        # the champion itself, not a blend that logs its version
        policies=() if champion is None else ("vw", f"vw@{champion}"),
    )
    # The newest decisions first, then the held-out ones among them: with ``id % every`` in
    # one query PostgreSQL's planner expected a two-hundredth of the rows to pass, and read
    # every decision of the champion to sort them (16 s at 10M decisions, 1.2 s at 1M:
    # benchmarks/log_scale.py), where the newest few thousand by the (model_version, id)
    # index were enough. A subquery with a LIMIT is planned on its own.
    newest = (
        select(decisions.c.id)
        .where(*dataclasses.replace(window, through=None, every=0).where())
        .order_by(decisions.c.id.desc())
        .limit(2 * settings.gate_decisions * settings.gate_holdout_every)
        .subquery()
    )
    recent = (
        select(newest.c.id)
        .where(newest.c.id % settings.gate_holdout_every == 0)
        .order_by(newest.c.id.desc())
        .limit(settings.gate_decisions)
        .subquery()
    )
    with engine.connect() as conn:
        first, last = conn.execute(select(func.min(recent.c.id), func.max(recent.c.id))).one()
    if first is None:
        return window
    return dataclasses.replace(window, after=first - 1, through=last)


def evaluate(engine: Engine, settings: Settings, version: int, now: float | None = None) -> Verdict:
    """The gate's verdict on ``version`` against the current champion (nothing is written)."""
    with engine.connect() as conn:
        champion = models.champion(conn)
    if champion is None:
        return Verdict(version, None, True, "no champion yet: the first version serves")
    if champion == version:
        return Verdict(version, champion, True, "already the champion")
    if settings.promotion != "gated":
        return Verdict(
            version,
            champion,
            False,
            f"cannot judge: with promotion={settings.promotion} no decisions were held out "
            "from learning, so replay would grade the versions on their own training data",
        )
    window = held_out_window(engine, settings, champion, now)
    name = settings.gate_estimator
    options = ReplayOptions(
        policies=(f"vw@{champion}", f"vw@{version}"),
        estimators=(name,),
        bootstrap=BOOTSTRAP,
        seed=version,
    )
    report = replay(
        engine,
        settings,
        options,
        window=window,
        reward_model=_reward_model(engine, settings, window),
    )
    n = report.n_decisions
    if n < settings.gate_min_decisions:
        return Verdict(
            version,
            champion,
            False,
            f"waiting: {n} held-out decisions of the champion with rewards in, the gate needs "
            f"{settings.gate_min_decisions}",
            decisions=n,
            estimator=name,
        )
    old, new = (report.accumulators[spec][0] for spec in options.policies)
    difference, low, high = paired_difference(new, old)
    old_value, new_value = old.get().value, new.get().value
    threshold = -settings.gate_margin * abs(old_value)
    coverage = new.weight_sum / new.slots if new.slots else 0.0
    figures = (
        f"{name} {new_value:.4f} vs champion {old_value:.4f} on {n} held-out decisions: "
        f"difference {difference:+.4f} [{low:+.4f}, {high:+.4f}]"
    )
    least = settings.gate_min_coverage
    if not least <= coverage <= 1 / max(least, 1e-9):
        promoted = False
        why = (
            f"the champion's decisions cover {coverage:.0%} of this version's choices"
            if coverage < least
            else "a few rarely explored slots carry most of the weight"
        )
        reason = (
            f"cannot judge: {why} (mean importance weight {coverage:.2f}, needs "
            f"{least:.2f} to {1 / max(least, 1e-9):.2f}); compare them in an A/B experiment "
            f"(arm vw@{version}) or promote by hand. Unreliable here: {figures}"
        )
    else:
        promoted = math.isfinite(low) and low >= threshold
        reason = (
            f"{figures}, lower bound {'>=' if promoted else 'below'} {threshold:+.4f} "
            f"(margin {settings.gate_margin:.0%}; coverage {coverage:.2f})"
        )
    return Verdict(
        version,
        champion,
        promoted,
        reason,
        decisions=n,
        estimator=name,
        challenger_value=new_value,
        champion_value=old_value,
        difference=difference,
        low=low,
        high=high,
        threshold=threshold,
        coverage=coverage,
    )


def judge(engine: Engine, settings: Settings, version: int, now: float | None = None) -> Verdict:
    """Evaluate ``version``, record the verdict, and promote it if it passed."""
    verdict = evaluate(engine, settings, version, now)
    with engine.begin() as conn:
        if verdict.champion != version:
            models.record_gate(
                conn,
                version=version,
                champion=verdict.champion,
                promoted=verdict.promoted,
                reason=verdict.reason,
                details=verdict.details(),
            )
    log.info(
        "gate: version %d %s: %s",
        version,
        "promoted" if verdict.promoted else "kept as challenger",
        verdict.reason,
    )
    return verdict


def guard(engine: Engine, settings: Settings, version: int, now: float | None = None) -> Verdict:
    """The offline guard a version passes before its canary: ``promoted`` here means "may
    serve a canary". It rejects only confident harm (the difference's upper bound below the
    margin, with enough held-out decisions and coverage to judge); wherever the held-out
    decisions cannot tell, the canary's live traffic decides."""
    verdict = evaluate(engine, settings, version, now)
    judged = verdict.coverage is not None and verdict.threshold is not None
    least = settings.gate_min_coverage
    covered = judged and least <= (verdict.coverage or 0.0) <= 1 / max(least, 1e-9)
    high = verdict.high if verdict.high is not None else math.inf
    if covered and math.isfinite(high) and high < (verdict.threshold or 0.0):
        reason = f"confidently worse offline, no canary: {verdict.reason}"
        return dataclasses.replace(verdict, promoted=False, reason=reason)
    return dataclasses.replace(verdict, promoted=True, reason=f"to a canary: {verdict.reason}")


def _reward_model(engine: Engine, settings: Settings, window: Window) -> ContextRewardModel | None:
    """DR's reward model on the held-out window: one that knows the context, learned from the
    decisions before and among them that the versions learned (``replay.context_model``);
    None for an estimator without a model."""
    if not make_estimator(settings.gate_estimator).uses_model:
        return None
    return ContextRewardModel.fit(engine, settings, window)
