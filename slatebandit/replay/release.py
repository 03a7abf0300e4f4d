"""Releases: every new checkpoint ends in a verdict (promote, reject or roll back), in bounded
traffic, with ``SLATEBANDIT_PROMOTION=gated``.

One ``Release.turn`` at a time, in the learner's process, after each learning turn:

1. **Guard.** With no canary running, the newest checkpoint that nothing has judged yet is
   replayed offline against the champion on held-out decisions (``replay.gate.guard``). If
   replay is confident it is worse by more than the margin, it is rejected there and never
   serves. Otherwise (no worse, or the champion's logs cannot tell, which with epsilon-greedy
   over 200 candidates is the usual case) it becomes the canary. The first version's canary
   is against the untrained model (version 0), which has nothing to roll back to, and takes
   half the shoppers (``FIRST_SHARE``): the untrained model has no record to protect.
2. **Canary.** The version serves ``canary_share`` of the shoppers outside experiments
   (``policies.canary``). Each turn adds the per-slot reward of every slate whose rewards are
   in (older than the reward wait) to the running moments of its arm, and
   ``CanaryRule.judge`` looks at the anytime-valid interval on canary minus champion:
   reject, promote, or keep serving; at ``canary_slates`` canary slates it always decides.
   Checkpoints keep coming meanwhile; once a verdict is in, the next canary is the newest.
   A canary whose champion changed under it (a manual promotion or rollback, a watch's
   rollback) is superseded.
3. **Watch.** After a promotion the new champion's live per-slot reward is compared, the same
   way, with what its canary earned and with the champion it replaced. Both figures are from
   before the promotion, so a confident loss may be harm or shoppers who changed: the watch
   then starts a *recheck*, a canary that serves the version before it on the canary's share
   beside it, and rolls back only if the champion does confidently worse side by side
   (``CanaryRule.recheck``); otherwise it is kept. After as many live slates as the canary's
   horizon (``canary_slates / canary_share``) without alarm, it is kept.

Each verdict, with its figures, is a row of ``model_gates`` (stage guard, canary or watch).
Work per turn is bounded: at most ``READ_LIMIT`` new decisions per canary or watch, read by
id range; the guard replays at most ``gate_decisions`` held-out decisions.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from sqlalchemy import Connection, Engine

from slatebandit.config import Settings
from slatebandit.logging import models
from slatebandit.logging import releases as store
from slatebandit.logging.objective import SlotReward, reward_rule
from slatebandit.policies.canary import ARM, CanaryRule, Judgement
from slatebandit.policies.learner import COMMIT_LAG
from slatebandit.replay.gate import Verdict, guard
from slatebandit.stats import Moments, difference

log = logging.getLogger(__name__)
READ_LIMIT = 20_000  # decisions one turn adds to a canary's or a watch's figures
UNTRAINED = 0  # the version an empty registry serves: the retrieval order plus exploration
FIRST_SHARE = 0.5  # the canary share while nothing has been promoted
RECHECK = "recheck"  # a canary row's watch: it serves the version before a watched champion
RECHECKING = "rechecking"  # a watched canary's watch while its recheck runs


def rule_of(settings: Settings) -> CanaryRule:
    return CanaryRule(settings.gate_margin, settings.canary_slates, settings.canary_share)


class Release:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.rule = rule_of(settings)
        self.active = settings.promotion == "gated" and settings.learning_mode == "online"
        # Canaries compare with the champion where it serves shoppers outside experiments.
        self.canaries = settings.policy == "vw"
        self.reward: SlotReward | None = None  # the objective's, read at the first turn

    def turn(self, now: float | None = None) -> None:
        """One step of every release in progress; does nothing unless promotion is gated."""
        if not self.active:
            return
        now = time.time() if now is None else now
        lag = 0.0 if self.engine.dialect.name == "sqlite" else COMMIT_LAG
        until = now - max(self.settings.reward_wait, lag)
        self._watch(until)
        with self.engine.connect() as conn:
            running = store.running_canary(conn)
        if running is not None:
            self._canary(running, until)
        else:
            self._next(now)

    # 1. guard ---------------------------------------------------------------------------------

    def _next(self, now: float) -> None:
        with self.engine.connect() as conn:
            champion = models.champion(conn)
            latest = models.latest_version(conn)
            if latest is None or latest.version == champion:
                return
            if models.gate_verdicts(conn, latest.version, limit=1):
                return  # judged already: wait for a newer checkpoint
            serving = None if champion is None else models.get_version(conn, champion)
            if self.canaries and not self._news(serving, latest):
                return  # too little learned since the champion to be worth a canary yet
        version = latest.version
        if champion is None and self.canaries:
            # The first version meets the untrained model (retrieval order plus exploration)
            # in a canary too: a model trained on a few seconds of traffic can serve worse.
            with self.engine.begin() as conn:
                if models.champion(conn) is None:
                    reason = "no champion yet: a canary against the untrained model"
                    self._start(conn, version, UNTRAINED, reason, {})
            return
        if champion is None:
            with self.engine.begin() as conn:
                models.record_gate(
                    conn,
                    version=version,
                    champion=None,
                    promoted=True,
                    reason="no champion yet: the first version serves",
                    details={},
                    stage="guard",
                    outcome="promote",
                )
            log.info("release: version %d is the first champion", version)
            return
        verdict = guard(self.engine, self.settings, version, now)
        with self.engine.begin() as conn:
            if models.champion(conn) != champion:
                return  # promoted or rolled back meanwhile: judge again next turn
            if not verdict.promoted or not self.canaries:
                # Without canaries (the default policy is not ``vw``) the guard decides alone,
                # as the offline gate did: promote only if replay found it no worse.
                promoted = verdict.promoted and not self.canaries and _no_worse(verdict)
                models.record_gate(
                    conn,
                    version=version,
                    champion=champion,
                    promoted=promoted,
                    reason=verdict.reason,
                    details=verdict.details(),
                    stage="guard",
                )
                log.info(
                    "release: guard %s version %d", "promoted" if promoted else "rejected", version
                )
                return
            self._start(conn, version, champion, verdict.reason, verdict.details())

    def _start(
        self,
        conn: Connection,
        version: int,
        champion: int,
        reason: str,
        details: dict[str, object],
    ) -> None:
        """Start ``version``'s canary beside ``champion`` and record the guard's word on it."""
        share = self.settings.canary_share
        if champion == UNTRAINED:
            # Nothing promoted yet: the retrieval order has no record to protect, and half the
            # shoppers bring the first verdict twice as soon as a quarter (on a storefront of
            # 4,000 slates it took a third of them at a quarter, the champion untrained).
            share = max(share, FIRST_SHARE)
        canary = store.start_canary(conn, version, champion, share)
        models.record_gate(
            conn,
            version=version,
            champion=champion or None,
            promoted=False,
            reason=reason,
            details={**details, "canary": canary},
            stage="guard",
            outcome="canary",
        )
        log.info("release: version %d serves canary %d beside %d", version, canary, champion)

    def _news(self, champion: models.ModelVersion | None, latest: models.ModelVersion) -> bool:
        """Whether ``latest`` learned enough since ``champion`` to spend a canary on: twice
        the champion's decisions early on (two versions a few seconds apart only use up a
        canary's budget proving they are equal), later as many decisions as the quickest
        verdict takes (``min_slates`` canary slates at the canary's share). The first
        version, against the untrained model, needs that many too: one checkpointed after a
        few seconds' traffic served worse than the retrieval order, and its canary ran to
        the budget while better checkpoints waited (``benchmarks/learning_curve.py``)."""
        before = 0 if champion is None else champion.learned_through
        quickest = self.rule.min_slates / self.rule.share
        needed = quickest if champion is None else min(max(before, 1), quickest)
        return latest.learned_through - before >= needed

    # 2. canary --------------------------------------------------------------------------------

    def _canary(self, canary: store.Canary, until: float) -> None:
        with self.engine.connect() as conn:
            champion = models.champion(conn) or UNTRAINED
            new, through = self._read(conn, canary.counted_through, until)
        if champion != canary.champion:
            self._end(canary, "superseded", f"the champion changed to {champion} under it")
            return
        arms = {
            ARM: Moments.from_list(canary.stats.get(ARM)),
            "champion": Moments.from_list(canary.stats.get("champion")),
        }
        canary_rewards = [
            r.reward for r in new if r.arm == ARM and r.model_version == canary.version
        ]
        champion_rewards = [
            r.reward for r in new if r.arm is None and r.model_version == canary.champion
        ]
        arms[ARM] += Moments.of(canary_rewards)
        arms["champion"] += Moments.of(champion_rewards)
        stats = {name: m.to_list() for name, m in arms.items()}
        if canary.watch == RECHECK:  # the champion judged beside the version before it
            judgement = self.rule.recheck(arms["champion"], arms[ARM])
        else:
            rule = dataclasses.replace(self.rule, share=canary.share)
            judgement = rule.judge(arms[ARM], arms["champion"])
        if judgement.verdict is None:
            if through != canary.counted_through:
                with self.engine.begin() as conn:
                    store.update_canary(conn, canary.id, counted_through=through, stats=stats)
            return
        if canary.watch == RECHECK:
            self._recheck(canary, judgement, stats, through)
            return
        promoted = judgement.verdict == "promote"
        details = {**judgement.figures(), "canary": canary.id}
        watch = promoted and canary.champion != UNTRAINED  # nothing earlier to roll back to
        with self.engine.begin() as conn:
            if (models.champion(conn) or UNTRAINED) != canary.champion:
                return  # changed since it was read: superseded next turn
            store.update_canary(
                conn,
                canary.id,
                counted_through=through,
                stats=stats,
                status="promoted" if promoted else "rejected",
                ended_at=time.time(),
                **(
                    {
                        "watch": "watching",
                        "watch_from": store.last_decision_id(conn),
                        "watch_through": store.last_decision_id(conn),
                        "watch_stats": {},
                    }
                    if watch
                    else {}
                ),
            )
            if promoted:  # one watch at a time: the newest champion's
                for other in store.list_canaries(conn, limit=20):
                    if other.watch == "watching" and other.id != canary.id:
                        store.update_canary(conn, other.id, watch="kept")
            models.record_gate(
                conn,
                version=canary.version,
                champion=canary.champion or None,
                promoted=promoted,
                reason=judgement.reason,
                details=details,
                stage="canary",
            )
        log.info(
            "release: canary %d (version %d) %s: %s",
            canary.id,
            canary.version,
            judgement.verdict,
            judgement.reason,
        )

    def _recheck(
        self,
        recheck: store.Canary,
        judgement: Judgement,
        stats: dict[str, list[float]],
        through: int,
    ) -> None:
        """End the watch's second look on ``judgement`` (``CanaryRule.recheck``): roll back
        if the champion did confidently worse beside the version before it, else keep it."""
        rolled = judgement.verdict == "rollback"
        champion, back = recheck.champion, recheck.version
        with self.engine.begin() as conn:
            if (models.champion(conn) or UNTRAINED) != champion:
                return  # changed since it was read: superseded next turn
            store.update_canary(
                conn,
                recheck.id,
                counted_through=through,
                stats=stats,
                status="promoted" if rolled else "rejected",
                ended_at=time.time(),
            )
            _end_watch(conn, recheck, "rolled_back" if rolled else "kept")
            if rolled:
                models.promote(conn, back, reason=f"watch: rolled back from {champion}")
            models.record_gate(
                conn,
                version=champion,
                champion=back,
                promoted=False,
                reason=(f"rolled back to {back}: " if rolled else "kept: ") + judgement.reason,
                details={**judgement.figures(), "canary": recheck.id},
                stage="watch",
                outcome="rollback" if rolled else "keep",
            )
        log.log(
            logging.WARNING if rolled else logging.INFO,
            "release: watch recheck %d: version %d %s: %s",
            recheck.id,
            champion,
            "rolled back" if rolled else "kept",
            judgement.reason,
        )

    def _end(self, canary: store.Canary, status: str, why: str) -> None:
        with self.engine.begin() as conn:
            store.update_canary(conn, canary.id, status=status, ended_at=time.time())
            if canary.watch == RECHECK:  # its champion was replaced: that watch is over
                _end_watch(conn, canary, "kept")
            models.record_gate(
                conn,
                version=canary.version,
                champion=canary.champion,
                promoted=False,
                reason=f"canary {status}: {why}",
                details={"canary": canary.id},
                stage="canary",
                outcome=status,
            )
        log.info("release: canary %d %s: %s", canary.id, status, why)

    # 3. watch ---------------------------------------------------------------------------------

    def _watch(self, until: float) -> None:
        with self.engine.connect() as conn:
            watched = store.watched_canary(conn)
            if watched is None:
                return
            champion = models.champion(conn)
            new, through = self._read(conn, watched.watch_through or 0, until)
        if champion != watched.version:  # replaced by a later release or by an operator
            with self.engine.begin() as conn:
                store.update_canary(conn, watched.id, watch="kept")
            return
        live = Moments.from_list((watched.watch_stats or {}).get("live"))
        live += Moments.of(
            [r.reward for r in new if r.arm is None and r.model_version == watched.version]
        )
        # Live against what the canary period showed: the version's own canary slates (did it
        # do worse once it served everyone?), and the champion it replaced, then (a version
        # that slipped through a short canary is judged again, on three times its traffic).
        references = {
            "its canary": Moments.from_list(watched.stats.get(ARM)),
            f"version {watched.champion} before it": Moments.from_list(
                watched.stats.get("champion")
            ),
        }
        checks = []
        for name, reference in references.items():
            d = difference(live, reference, self.rule.alpha, self.rule.horizon)
            threshold = -self.settings.gate_margin * abs(reference.mean)
            figures = (
                f"live {live.mean:.4f} ({live.n} slates) vs {name} {reference.mean:.4f} "
                f"({reference.n}): difference {d.estimate:+.4f}, anytime 95% [{d.low:+.4f}, "
                f"{d.high:+.4f}], threshold {threshold:+.4f}"
            )
            checks.append((d, threshold, figures))
        worse = [c for c in checks if live.n >= self.rule.min_slates and c[0].high < c[1]]
        stats = {"live": live.to_list()}
        with self.engine.begin() as conn:
            if worse:
                # Worse than before its promotion: harm, or shoppers who changed (both
                # references are from the past). The version before it serves the canary's
                # share beside it, and ``_recheck`` rolls back only on a side-by-side loss.
                d, threshold, figures = worse[0]
                running = store.running_canary(conn)
                if running is not None:
                    store.update_canary(conn, running.id, status="superseded", ended_at=time.time())
                    models.record_gate(
                        conn,
                        version=running.version,
                        champion=running.champion or None,
                        promoted=False,
                        reason="canary superseded: the watch rechecks its champion",
                        details={"canary": running.id},
                        stage="canary",
                        outcome="superseded",
                    )
                store.update_canary(
                    conn, watched.id, watch=RECHECKING, watch_through=through, watch_stats=stats
                )
                back = watched.champion
                recheck = store.start_canary(conn, back, watched.version, self.rule.share)
                store.update_canary(conn, recheck, watch=RECHECK)
                models.record_gate(
                    conn,
                    version=watched.version,
                    champion=back,
                    promoted=False,
                    reason=(
                        f"worse live than before its promotion: {figures}; version {back} "
                        f"serves {self.rule.share:.0%} of the shoppers beside it to tell harm "
                        "from a change in the shoppers"
                    ),
                    details={**d.to_dict(), "threshold": threshold, "canary": recheck},
                    stage="watch",
                    outcome="recheck",
                )
                log.warning(
                    "release: watch rechecks %d beside %d: %s", watched.version, back, figures
                )
            elif live.n >= self.rule.horizon:
                store.update_canary(
                    conn, watched.id, watch="kept", watch_through=through, watch_stats=stats
                )
                models.record_gate(
                    conn,
                    version=watched.version,
                    champion=watched.champion,
                    promoted=False,
                    reason=f"kept after {live.n} live slates: " + "; ".join(c[2] for c in checks),
                    details={**checks[0][0].to_dict(), "canary": watched.id},
                    stage="watch",
                    outcome="keep",
                )
            elif through != watched.watch_through:
                store.update_canary(conn, watched.id, watch_through=through, watch_stats=stats)

    def _read(
        self, conn: Connection, after: int, until: float
    ) -> tuple[list[store.SlateReward], int]:
        """New slates outside experiments whose rewards are in, and the last id read."""
        if self.reward is None:  # once: the revenue scale may be the catalog's median price
            self.reward = reward_rule(conn, self.settings)
        rows, through = store.slate_rewards(conn, after, until, READ_LIMIT, self.reward)
        return [r for r in rows if r.experiment is None], through


def _end_watch(conn: Connection, recheck: store.Canary, outcome: str) -> None:
    """Record ``outcome`` on the watch that ``recheck`` was started for."""
    for other in store.list_canaries(conn, limit=20):
        if other.watch == RECHECKING and other.version == recheck.champion:
            store.update_canary(conn, other.id, watch=outcome)


def _no_worse(verdict: Verdict) -> bool:
    low, threshold = verdict.low, verdict.threshold
    return low is not None and threshold is not None and low >= threshold
