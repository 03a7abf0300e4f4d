"""The learner: joins rewards to shown slots and teaches VW, exactly once per slot.

Once a decision is older than the reward wait, each of its shown slots becomes one example:
the shared features the scorer saw plus the slot, the shown item's features as of the logged
revision, cost = -reward and probability = the logged propensity. The reward is the
objective's (``SLATEBANDIT_OBJECTIVE``, ``logging.objective``): the rewards' ``reward``
(aggregated, or the default reward), or their money ``value`` over the revenue scale.

Held out: with gated promotion, every ``gate_holdout_every``-th decision (by id) is never
learned, by any version, so the release guard (``replay.gate``) can compare a new version with
the champion on decisions neither has seen.

Apprentice mode: before learning a decision, the learner asks the model which candidate it
would rank first and counts whether the serving policy showed that item in slot 0; each
checkpoint stores the counts (``compared``, ``agreed``) and is never promoted.

Exactly once: the learner's progress (the last decision id learned) is stored only inside a
checkpoint, in the same row as the model bytes that contain those examples. A crash loses the
examples learned since the last checkpoint *and* the progress past it, so a restart learns
them again into the checkpointed model: none is skipped, none counted twice. A lease in the
database lets one learner run at a time across processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from sqlalchemy import Engine

from slatebandit.bandit import (
    FEATURE_SPEC_VERSION,
    SharedFeatures,
    VWScorer,
    action_features,
    slot_example,
)
from slatebandit.config import Settings
from slatebandit.logging import DecisionPayload, models
from slatebandit.logging.learning import (
    DueDecision,
    due_decisions,
    revision_snapshots,
    take_lease,
)
from slatebandit.logging.objective import reward_rule
from slatebandit.logging.spool import shipping
from slatebandit.retrieval import snapshot_features

log = logging.getLogger(__name__)
LEASE = "learner"
LEASE_SECONDS = 30.0  # the default of SLATEBANDIT_LEARNER_LEASE_SECONDS
# PostgreSQL may commit a lower decision id a moment after a higher one, so the learner stays
# this many seconds behind; SQLite commits one writer at a time, in id order.
COMMIT_LAG = 2.0


def slot_features(
    payload: DecisionPayload,
    slot: int,
    snapshots: dict[int, tuple[int, dict]],  # type: ignore[type-arg]
) -> str:
    """The shown item's features in ``slot`` exactly as the scorer saw them."""
    return candidate_features(payload, int(payload.chosen[slot]), snapshots)


def candidate_features(
    payload: DecisionPayload,
    candidate: int,
    snapshots: dict[int, tuple[int, dict]],  # type: ignore[type-arg]
) -> str:
    """A candidate's features as the scorer saw them: the content tokens of the logged
    revision, then the logged popularity and age bands."""
    key, fields = snapshots[int(payload.candidate_revs[candidate])]
    return action_features(
        snapshot_features(key, fields),
        int(payload.candidate_dynamic[candidate]),
        payload.feature_spec,
    )


def hold_lease(engine: Engine, holder: str, seconds: float = LEASE_SECONDS) -> bool:
    """Take or renew the learner lease for ``holder`` for ``seconds``; False while another
    learner holds it. A learner that dies keeps it that long: then another takes over."""
    with engine.begin() as conn:
        return take_lease(conn, LEASE, holder, time.time(), seconds)


class Learner:
    def __init__(self, engine: Engine, settings: Settings, holder: str) -> None:
        self.engine = engine
        self.settings = settings
        self.holder = holder
        with engine.connect() as conn:
            latest = models.latest_version(conn)
            data = None if latest is None else models.model_bytes(conn, latest.version)
            self.reward = reward_rule(conn, settings)  # what a slot teaches: the objective
        if latest is None:
            self.scorer = VWScorer(settings.vw_args)
            self.parent, self.examples, self.position = None, 0, 0
        else:  # continue the lineage from the newest checkpoint
            self.scorer = VWScorer(latest.vw_args, version=latest.version, model_bytes=data)
            self.parent, self.examples = latest.version, latest.examples
            self.position = latest.learned_through
        # ``position``: the last decision learned in memory; saved only with a checkpoint.
        self.pending = 0  # examples learned since the last checkpoint
        self.compared = self.agreed = 0  # apprentice counts since the last checkpoint
        self.last_checkpoint = time.monotonic()
        self.on_checkpoint: Callable[[int], None] | None = None
        self.apprentice = settings.learning_mode == "apprentice"
        gated = settings.promotion == "gated" and not self.apprentice  # an apprentice never serves
        self.holdout = settings.gate_holdout_every if gated else 0

    def hold_lease(self) -> bool:
        return hold_lease(self.engine, self.holder, self.settings.learner_lease_seconds)

    def step(self, now: float | None = None) -> int:
        """Learn one batch of due decisions; returns how many decisions it took."""
        now = time.time() if now is None else now
        lag = 0.0 if self.engine.dialect.name == "sqlite" else COMMIT_LAG
        until = now - max(self.settings.reward_wait, lag)
        with self.engine.connect() as conn:
            due = due_decisions(
                conn, self.position, until, self.settings.learn_batch, self.reward.column()
            )
            # Asked after the decisions were read: if a spool shipped some of them, its
            # progress row is already visible, and this batch waits for their rewards.
            if due and shipping(conn):
                return 0
            if self.apprentice:  # the model ranks every candidate
                revs = sorted({int(r) for d in due for r in d.payload.candidate_revs})
            else:
                revs = sorted(
                    {int(d.payload.candidate_revs[i]) for d in due for i in d.payload.chosen}
                )
            snapshots = revision_snapshots(conn, revs)
        if due:
            self.pending += sum(self._learn(decision, snapshots) for decision in due)
            self.position = due[-1].decision_id
        if self.pending >= self.settings.checkpoint_every or (
            self.pending
            and time.monotonic() - self.last_checkpoint >= self.settings.checkpoint_seconds
        ):
            self.checkpoint()
        return len(due)

    def _learn(self, decision: DueDecision, snapshots: dict[int, tuple[int, dict]]) -> int:  # type: ignore[type-arg]
        if self.holdout and decision.decision_id % self.holdout == 0:
            return 0  # kept for the promotion gate
        payload = decision.payload
        context = payload.context
        shared = SharedFeatures.from_log(context)
        if self.apprentice and len(payload.chosen):
            self._compare(shared, payload, snapshots)
        for slot, item_key, propensity in decision.slots:
            features = slot_features(payload, slot, snapshots)
            reward = self.reward.of(decision.rewards.get(item_key, []))
            self.scorer.learn(slot_example(shared, slot, features, reward, propensity))
        return len(decision.slots)

    def _compare(
        self,
        shared: SharedFeatures,
        payload: DecisionPayload,
        snapshots: dict[int, tuple[int, dict]],  # type: ignore[type-arg]
    ) -> None:
        """Apprentice: is the model's top candidate what the serving policy showed first?"""
        actions = [
            candidate_features(payload, i, snapshots) for i in range(len(payload.candidate_revs))
        ]
        scores = self.scorer.score(shared, actions)
        self.compared += 1
        self.agreed += int(np.argmax(scores)) == int(payload.chosen[0])

    def checkpoint(self) -> int | None:
        """Store the model with its progress (one row, one transaction); with
        ``promotion=always`` promote it too. Gated releases judge it later
        (``replay.release``)."""
        if self.pending == 0:
            return None
        data = self.scorer.to_bytes()
        with self.engine.begin() as conn:
            version = models.save_version(
                conn,
                parent=self.parent,
                vw_args=self.scorer.args,
                feature_spec=FEATURE_SPEC_VERSION,
                examples=self.examples + self.pending,
                learned_through=self.position,
                model=data,
                compared=self.compared,
                agreed=self.agreed,
            )
            if self.settings.promotion == "always" and not self.apprentice:
                models.promote(conn, version, reason="checkpoint, promoted (promotion=always)")
            models.prune_models(conn, self.settings.keep_models)
        self.parent, self.examples = version, self.examples + self.pending
        self.pending = self.compared = self.agreed = 0
        self.last_checkpoint = time.monotonic()
        log.info(
            "checkpoint: version %d, %d examples through decision %d",
            version,
            self.examples,
            self.position,
        )
        if self.on_checkpoint is not None:
            self.on_checkpoint(version)
        return version

    def run_due(self, now: float | None = None, budget: float = float("inf")) -> int:
        """Learn every due decision (or for ``budget`` seconds); returns how many."""
        started, total = time.monotonic(), 0
        while time.monotonic() - started < budget:
            taken = self.step(now)
            total += taken
            if taken == 0:
                break
        return total
