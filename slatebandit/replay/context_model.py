"""A reward model that knows the context, for DM and DR on the gate's held-out decisions.

q(x, a) is a Vowpal Wabbit regressor (``--cb_adf --cb_type dm``: squared loss on the shown
item's reward, no importance weights) of a shown slot's reward on what the scorer saw: the
shared user and request features (``SharedFeatures.from_log``) and the candidate's features as
of its logged revision (``Chunk.actions``, the strings of the learner's ``candidate_features``),
with the scorer's interactions ``-q ui -q ci``. So it can tell that shoppers on mobile click
dresses and those on a desktop shoes, which an item's mean reward (``RewardModel``) averages
away: there DM is biased, and DR's correction carries the whole context effect.

It learns the shown slots of the most recent ``TRAIN_DECISIONS`` *learned* decisions up to
the evaluated window's last id (ids not divisible by ``gate_holdout_every``), in one pass
(several when they are few), each labelled with its reward as the learner labels it (the
objective's ``logging.objective.SlotReward``); then it predicts for every candidate of every
decision of the window, which must hold held-out decisions only.

No cross-fitting, unlike ``RewardModel``: the model never saw a reward of the decisions it
predicts for, so DR's correction term is never fitted on its own reward; the decisions it did
learn are the ones the compared versions learned too. Like ``RewardModel`` it has no slot
effect (q is the same in every slot); the cascade estimators' tail is the mean reward of each
slot of the learned decisions.

Cost is bounded whatever the size of the log: ``TRAIN_DECISIONS`` decisions learned and one
multi-line predict per evaluated decision, which scores all its candidates in one call.
Measured on the 2-core machine (``benchmarks.replay``'s log, k=10, 200 candidates): learning
5,000 decisions took 1.1 s, predicting for 2,000 held-out ones 2.0 s, half of it reading and
featurising the candidates, as replaying a ``vw@V`` target does.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pylibvw  # VW's C++ binding, installed by the vowpalwabbit wheel
import vowpalwabbit
from sqlalchemy import Engine, func, select

from slatebandit.bandit import action_line
from slatebandit.bandit.features import ACTION_SEPARATOR
from slatebandit.config import Settings
from slatebandit.logging.objective import SlotReward, reward_rule
from slatebandit.logging.schema import decisions
from slatebandit.replay.log import Chunk, Revisions, Window, extent, read_chunks
from slatebandit.replay.reward_model import PRIOR

log = logging.getLogger(__name__)
# -l 0.05, not VW's 0.5: at 0.5 a token seen once or twice (an item's id) takes a large first
# step, and measured on a log whose clicks depend on the shopper, q's error over all
# candidates was worse than a constant's; at 0.05 it had a third less error than a constant.
ARGS = "--cb_adf --cb_type dm -q ui -q ci -b 20 -l 0.05 --quiet"
TRAIN_DECISIONS = 5000  # learned decisions the model is fitted on, the most recent ones
# A young log has few slots to learn, and one pass at -l 0.05 left q far from the rewards
# (measured on the tests' log, 3,600 slots: 0.87 for clicked items, 0.17 for the others; 0.98
# and 0.03 after 5 passes): fewer than UPDATES slots are learned in several passes.
UPDATES = 20_000
MAX_PASSES = 5


class ContextRewardModel:
    """Predictions for the candidates of a window of held-out decisions (``fit``), served to
    replay through ``RewardModel``'s interface: ``item_values`` and ``continuation``."""

    def __init__(
        self,
        trained: np.ndarray,
        slot_mean: np.ndarray,
        mean: float,
        predicted: np.ndarray,
        keys: np.ndarray,
        values: np.ndarray,
    ) -> None:
        self.trained = trained  # ids of the decisions learned, ascending
        self.slot_mean = slot_mean  # mean reward of each slot of the learned decisions
        self.mean = mean  # mean reward of every learned slot: the prediction for the unknown
        self.predicted = predicted  # (N,) ids of the decisions predicted for, ascending
        self.keys = keys  # (N, C) their candidates' item keys, -1 past the last one
        self.values = values  # (N, C) q of each candidate

    @classmethod
    def fit(
        cls,
        engine: Engine,
        settings: Settings,
        window: Window,
        decisions: int = TRAIN_DECISIONS,
    ) -> ContextRewardModel:
        """Learn from the ``decisions`` most recent learned decisions up to the last of
        ``window`` (held out: ``window.every`` a multiple of ``gate_holdout_every``), then
        predict for every candidate of every decision of ``window``."""
        every = settings.gate_holdout_every
        if not window.every or window.every % every:
            raise ValueError(
                f"`window.every` must be a multiple of gate_holdout_every ({every}): the "
                f"context model predicts for held-out decisions only, got {window.every}"
            )
        with engine.connect() as conn:
            through = window.through
            if through is None:
                through = extent(conn, window).last_id or window.after
            window = dataclasses.replace(window, through=through)
            rule = reward_rule(conn, settings)  # what the learner taught
        started = time.perf_counter()
        vw = vowpalwabbit.Workspace(ARGS)
        try:
            features = _Features()  # both passes see the same items
            trained, slot, reward = _learn(vw, engine, window, features, every, decisions, rule)
            learned = time.perf_counter()
            predicted, keys, values = _predict_window(vw, engine, window, features)
        finally:
            vw.finish()
        log.info(
            "context reward model: learned %d slots of %d decisions in %.2f s, predicted for "
            "%d held-out decisions in %.2f s",
            len(slot),
            len(trained),
            learned - started,
            len(predicted),
            time.perf_counter() - learned,
        )
        mean = float(reward.mean()) if len(reward) else 0.0
        total = np.bincount(slot, weights=reward)
        count = np.bincount(slot, minlength=len(total))
        slot_mean = (total + PRIOR * mean) / (count + PRIOR)
        if len(reward):
            # The expected reward lies within the rewards' range; a linear q strays outside it,
            # and bringing it back can only bring it nearer.
            values = values.clip(reward.min(), reward.max())
        return cls(trained, slot_mean, mean, predicted, keys, values)

    def item_values(self, decision_ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """q of each decision's ``keys`` (one row per decision, in its candidate order); a
        decision or candidate not predicted for gets the mean reward."""
        out = np.full(keys.shape, self.mean)
        if len(self.predicted) == 0 or keys.size == 0:
            return out
        rows = np.searchsorted(self.predicted, decision_ids).clip(max=len(self.predicted) - 1)
        known = np.flatnonzero(self.predicted[rows] == decision_ids)
        width = min(keys.shape[1], self.keys.shape[1])
        logged = self.keys[rows[known], :width]
        same = (logged == keys[known, :width]) & (logged >= 0)
        block = out[known, :width]
        block[same] = self.values[rows[known], :width][same]
        out[known, :width] = block
        return out

    def continuation(
        self, decision_ids: np.ndarray, slot: np.ndarray, depth: np.ndarray
    ) -> np.ndarray:
        """Expected reward of the slots below ``slot`` in a slate of ``depth`` slots: the
        learned decisions' mean reward of each, summed (cascade-DR's Q-function tail)."""
        width = int(depth.max(initial=0)) + 1
        means = np.full(width, self.mean)
        means[: min(width, len(self.slot_mean))] = self.slot_mean[:width]
        cumulative = np.r_[0.0, np.cumsum(means)]
        return cumulative[depth] - cumulative[slot + 1]


def _learn(
    vw: vowpalwabbit.Workspace,
    engine: Engine,
    window: Window,
    features: _Features,
    every: int,
    limit: int,
    rule: SlotReward,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teach ``vw`` the shown slots of the ``limit`` most recent learned decisions through
    ``window.through``; returns their ids, and the slot and reward of every slot learned."""
    assert window.through is not None
    learned = [decisions.c.id <= window.through, decisions.c.id % every != 0]
    if np.isfinite(window.until):
        learned.append(decisions.c.created_at < window.until)
    recent = (
        select(decisions.c.id)
        .where(*learned)
        .order_by(decisions.c.id.desc())
        .limit(limit)
        .subquery()
    )
    with engine.connect() as conn:
        first = conn.execute(select(func.min(recent.c.id))).scalar()
    ids, slots, rewards = (
        [np.zeros(0, dtype=np.int64)],
        [np.zeros(0, dtype=np.int64)],
        [np.zeros(0)],
    )
    if first is None:
        return ids[0], slots[0], rewards[0]
    # Replay's reader: the features the scorer saw and each slot's reward, made as the
    # learner makes it (``rule``); the held-out decisions among them are skipped here, since
    # a window selects multiples of ``every``, not the others.
    span = Window(until=window.until, after=first - 1, through=window.through)
    chunks = read_chunks(engine, span, reward=rule)
    examples: list[str] = []
    for chunk, revisions in chunks:
        keep = chunk.decision_ids % every != 0
        shared = [chunk.shared(row).line() if keep[row] else "" for row in range(len(keep))]
        taught = np.flatnonzero(keep[chunk.row])
        for i in taught:
            row, column = int(chunk.row[i]), int(chunk.chosen[i])
            action = features.of(chunk, revisions, row, column)
            # probability 1: --cb_type dm ignores it, the regression is unweighted
            examples.append(f"{shared[row]}\n0:{-chunk.reward[i]:g}:1 {action_line(action)}")
        ids.append(chunk.decision_ids[keep])
        slots.append(chunk.slot[taught])
        rewards.append(chunk.reward[taught])
    for _ in range(min(MAX_PASSES, -(-UPDATES // max(len(examples), 1)))):
        for example in examples:
            _learn_text(vw, example)
    return np.concatenate(ids), np.concatenate(slots), np.concatenate(rewards)


class _Features:
    """``Chunk.action``, memoised by (revision, bands, feature spec): the same candidate
    recurs in many decisions, and building its features cost more than VW's predict
    (measured)."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, int, int], str] = {}

    def of(self, chunk: Chunk, revisions: Revisions, row: int, column: int) -> str:
        key = (int(chunk.revs[row, column]), int(chunk.dynamic[row, column]), int(chunk.specs[row]))
        features = self._known.get(key)
        if features is None:
            features = self._known[key] = chunk.action(revisions, row, column)
        return features

    def actions(self, chunk: Chunk, revisions: Revisions, row: int) -> list[str]:
        return [self.of(chunk, revisions, row, c) for c in range(int(chunk.valid[row].sum()))]


def _predict_window(
    vw: vowpalwabbit.Workspace,
    engine: Engine,
    window: Window,
    features: _Features,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, candidate keys, q) of every decision of ``window``, padded to the widest."""
    ids, key_rows, value_rows = [], [], []
    chunks = read_chunks(engine, window)  # for the candidates: their rewards go unused
    for chunk, revisions in chunks:
        for row in range(len(chunk.decision_ids)):
            actions = features.actions(chunk, revisions, row)
            text = ACTION_SEPARATOR.join([chunk.shared(row).line(), *actions])
            value_rows.append(_predict_text(vw, text) if actions else np.zeros(0))
            key_rows.append(chunk.keys[row, : len(actions)])
        ids.append(chunk.decision_ids)
    width = max((len(k) for k in key_rows), default=0)
    keys = np.full((len(key_rows), width), -1, dtype=np.int64)
    values = np.zeros((len(key_rows), width))
    for i, (k, v) in enumerate(zip(key_rows, value_rows, strict=True)):
        keys[i, : len(k)], values[i, : len(v)] = k, v
    return (np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)), keys, values


# pyvw wraps each parsed line in a Python Example object, which costs more than VW's own work
# here (``VWScorer._predict`` says the same of prediction): both call the binding directly.
def _learn_text(vw: vowpalwabbit.Workspace, text: str) -> None:
    examples = pylibvw.vw._parse(vw, text)
    try:
        pylibvw.vw.learn_multi(vw, examples)
    finally:
        pylibvw.vw._finish_example_multi_ex(vw, examples)


def _predict_text(vw: vowpalwabbit.Workspace, text: str) -> np.ndarray:
    """Expected reward of each action of one multi-line example (VW predicts costs)."""
    examples = pylibvw.vw._parse(vw, text)
    try:
        pylibvw.vw.predict_multi(vw, examples)
        costs = examples[0].get_action_scores()
    finally:
        pylibvw.vw._finish_example_multi_ex(vw, examples)
    return 0.0 - np.asarray(costs, dtype=np.float64)
