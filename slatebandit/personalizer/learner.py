"""Each loop's learner: once an event is older than the loop's reward wait, every slot of it
becomes one VW example (cost = -reward, probability = the logged one), exactly once.

Exactly once works as in ``policies.learner``: the last event id learned is stored only with
a checkpoint, in the row of the model that holds those examples. Checkpoints come every
``modelExportFrequency``. An import or reset (a newer row this learner did not write) makes
it start over from that model.

Events that were never activated teach nothing (deferred activation), and a slot without a
reward gets the loop's default reward. LoggingOnly loops log but do not learn. Apprentice
loops learn, and before each event count whether the model's first choice is the baseline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from sqlalchemy import Engine

from slatebandit.bandit import VWScorer
from slatebandit.logging import personalizer as store
from slatebandit.logging.learning import slot_reward, take_lease
from slatebandit.personalizer.configuration import ServiceConfiguration
from slatebandit.personalizer.events import Event
from slatebandit.policies.learner import COMMIT_LAG

log = logging.getLogger(__name__)
LEASE = "personalizer"
LEASE_SECONDS = 30.0
BATCH = 1000  # events read per step
RETENTION_CHECK_SECONDS = 3600.0


class LoopLearner:
    def __init__(self, engine: Engine, loop: str) -> None:
        self.engine, self.loop = engine, loop
        self.scorer: VWScorer | None = None
        self.parent = self.examples = self.position = 0
        self.pending = self.compared = self.agreed = 0
        self.rewards = self.agreed_rewards = 0.0  # the baseline's, in apprentice mode
        self.last_checkpoint = time.monotonic()

    def _follow(self) -> None:
        """Load the newest model if this learner did not write it (first turn, import, reset)."""
        with self.engine.connect() as conn:
            latest = store.latest_model(conn, self.loop)
            if latest is None or latest.version == self.parent:
                return
            data = store.model_bytes(conn, latest.version)
        if self.scorer is not None:
            self.scorer.finish()
        self.scorer = VWScorer(latest.vw_args, version=latest.version, model_bytes=data)
        self.parent, self.examples = latest.version, latest.examples
        self.position = latest.learned_through
        self.pending = self.compared = self.agreed = 0
        self.rewards = self.agreed_rewards = 0.0

    def step(self, service: ServiceConfiguration, now: float | None = None) -> int:
        """Learn one batch of due events; returns how many it read."""
        now = time.time() if now is None else now
        self._follow()
        if self.scorer is None:
            return 0
        # PostgreSQL may commit a lower event id a moment after a higher one: stay behind.
        lag = 0.0 if self.engine.dialect.name == "sqlite" else COMMIT_LAG
        until = now - max(service.reward_wait_seconds, lag)
        with self.engine.connect() as conn:
            due = store.events_after(conn, self.loop, self.position, until=until, limit=BATCH)
        every_action = "mtr" not in self.scorer.args.split()
        for stored in due:
            if stored.activated and service.learning_mode != "LoggingOnly":
                self.pending += self._learn(stored, service, every_action)
        if due:
            self.position = due[-1].id
        if self.pending and time.monotonic() - self.last_checkpoint >= service.model_export_seconds:
            self.checkpoint()
        return len(due)

    def _learn(self, stored: store.StoredEvent, service: ServiceConfiguration, every: bool) -> int:
        assert self.scorer is not None
        event = Event.from_bytes(stored.payload)
        rewards = [
            slot_reward(
                stored.rewards.get(j, []), service.reward_aggregation, service.default_reward
            )
            for j in range(len(event.slots))
        ]
        if service.learning_mode == "Apprentice":
            self._compare(event, rewards[0])
        for j, reward in enumerate(rewards):
            self.scorer.learn(event.example(j, reward, every))
        return len(event.slots)

    def _compare(self, event: Event, reward: float) -> None:
        """Apprentice: would the model, before learning this event, have shown the baseline?"""
        assert self.scorer is not None
        allowed = event.allowed(0)
        lines = [event.action_line(i) for i in range(len(allowed))]
        scores = self.scorer.score_lines(event.shared_line(0), lines)
        scores[~allowed] = -np.inf
        agreed = int(np.argmax(scores)) == event.slots[0].baseline
        self.compared += 1
        self.agreed += agreed
        self.rewards += reward
        self.agreed_rewards += reward if agreed else 0.0

    def checkpoint(self) -> int | None:
        """Store the model and its progress in one row, unless an import or reset came first."""
        if self.pending == 0 or self.scorer is None:
            return None
        data = self.scorer.to_bytes()
        with self.engine.begin() as conn:
            store.lock_loop(conn, self.loop)  # an import or reset cannot slip in between
            latest = store.latest_model(conn, self.loop)
            if latest is not None and latest.version != self.parent:
                log.info(
                    "loop %s: a new model arrived; this learner starts over from it", self.loop
                )
                self.pending = 0
                return None
            version = store.save_model(
                conn,
                loop=self.loop,
                parent=self.parent,
                origin="learned",
                vw_args=self.scorer.args,
                examples=self.examples + self.pending,
                learned_through=self.position,
                model=data,
                compared=self.compared,
                agreed=self.agreed,
                rewards=self.rewards,
                agreed_rewards=self.agreed_rewards,
            )
        self.parent, self.examples = version, self.examples + self.pending
        self.pending = self.compared = self.agreed = 0
        self.rewards = self.agreed_rewards = 0.0
        self.last_checkpoint = time.monotonic()
        log.info("loop %s: version %d, %d examples", self.loop, version, self.examples)
        return version


def stored_configurations(engine: Engine, names: Sequence[str]) -> dict[str, ServiceConfiguration]:
    """The service configuration of each loop in ``names`` that a server has created."""
    found = {}
    with engine.connect() as conn:
        for name in names:
            stored = store.read_loop(conn, name)
            if stored is not None:
                found[name] = ServiceConfiguration.from_store(stored.service)
    return found


class PersonalizerLearner:
    """Every loop's learner, run in turns by whoever holds the ``personalizer`` lease."""

    def __init__(self, engine: Engine, holder: str, lease_seconds: float = LEASE_SECONDS) -> None:
        self.engine, self.holder, self.lease_seconds = engine, holder, lease_seconds
        self.learners: dict[str, LoopLearner] = {}
        self.last_purge = 0.0

    def turn(
        self,
        configurations: dict[str, ServiceConfiguration],
        budget: float,
        now: float | None = None,
    ) -> int:
        """Learn what is due in every loop, for up to ``budget`` seconds, if this process holds
        the lease (``now``: the clock the reward waits are measured against)."""
        with self.engine.begin() as conn:
            if not take_lease(conn, LEASE, self.holder, time.time(), self.lease_seconds):
                return 0
        started, total = time.monotonic(), 0
        for name, service in configurations.items():
            learner = self.learners.setdefault(name, LoopLearner(self.engine, name))
            while time.monotonic() - started < budget:
                taken = learner.step(service, now)
                total += taken
                if taken < BATCH:
                    break
        if time.monotonic() - self.last_purge >= RETENTION_CHECK_SECONDS:
            self.purge(configurations)
        return total

    def purge(self, configurations: dict[str, ServiceConfiguration]) -> int:
        """Delete events older than each loop's logRetentionDays."""
        self.last_purge, deleted = time.monotonic(), 0
        for name, service in configurations.items():
            if service.log_retention_days > 0:
                cutoff = time.time() - service.log_retention_days * 86400.0
                with self.engine.begin() as conn:
                    deleted += store.delete_events(conn, name, before=cutoff)
        return deleted

    def stop(self) -> None:
        for learner in self.learners.values():
            learner.checkpoint()
