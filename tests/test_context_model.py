"""The gate's context reward model: learned only from decisions the versions learned, it knows
which items each context clicks, and DR with it agrees with DR on item means, more narrowly.

A real log (real VW scoring and learning, the real slate builder, SQLite) whose clicks depend
on the shopper's device: on mobile, women's and kids' items get clicked; on a desktop, every
other department's. Every item is liked in one context and not the other, so its mean reward
says little of either. The decisions are made as serving makes them but written straight to
the log: through the app, popularity bands decay with the wall clock and the popular list
refreshes in the background, so two runs logged different candidates (and the gate's
interval was 0.002 wide in one run, 0.11 in the next).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine, insert, select

from slatebandit.bandit import (
    FEATURE_SPEC_VERSION,
    LAYOUT_CODES,
    Exploration,
    SharedFeatures,
    VWScorer,
    action_features,
    build_slate,
    layout,
    slot_example,
)
from slatebandit.config import Settings
from slatebandit.logging import DecisionPayload, DecisionRecord, ShownSlot, models, open_engine
from slatebandit.logging.learning import due_decisions, revision_snapshots
from slatebandit.logging.schema import decisions, items, rewards
from slatebandit.policies.learner import slot_features
from slatebandit.replay import ReplayOptions, RewardModel, replay
from slatebandit.replay.context_model import ContextRewardModel
from slatebandit.replay.estimators import paired_difference
from slatebandit.replay.evaluate import ItemRewardModel
from slatebandit.replay.gate import BOOTSTRAP, evaluate, held_out_window
from slatebandit.replay.log import Window, read_chunks, read_shown
from slatebandit.retrieval import SIMILAR, item_tokens, scorer_features
from slatebandit.retrieval.demo import demo_items
from tests.conftest import make_settings, seed_catalog

EVERY = 4  # every 4th decision is held out
START = 1_790_000_000.0  # the log's clock: decision i is made at START + i seconds
JUDGED = START + 10_000  # when the gate judges: after every decision and reward
ITEMS = list(demo_items(150, seed=8))
CANDIDATES = 80
DEVICES = ("mobile", "desktop")


def clicked(device: str, category: str) -> bool:
    return category.startswith(("women/", "kids/")) == (device == "mobile")


def _log(engine: Engine, settings: Settings, scorer: VWScorer, n: int, seed: int) -> None:
    """``n`` decisions of 4 slots, each as serving makes it: ``scorer`` scores a seeded sample
    of candidates for a shopper on a seeded device at noon, the slate builder fills the
    settings' layout with their exploration; every shown item the device likes is clicked."""
    rng = np.random.default_rng(seed)
    with engine.connect() as conn:
        rows = conn.execute(select(items.c.key, items.c.rev, items.c.category)).all()
        snapshots = revision_snapshots(conn, [row.rev for row in rows])
        last = conn.execute(select(decisions.c.id).order_by(decisions.c.id.desc())).scalar()
    keys = np.array([row.key for row in rows])
    revs = np.array([row.rev for row in rows])
    _, category = np.unique([row.category for row in rows], return_inverse=True)
    features = []
    for row in rows:
        key, fields = snapshots[row.rev]
        tokens = item_tokens(
            fields["category"], fields["brand"], fields["price"], fields["attributes"]
        )
        features.append(action_features(scorer_features(key, tokens), 0))
    exploration = Exploration("epsilon", epsilon=settings.epsilon)
    kinds = layout(4, settings.explore_slots, settings.diverse_slots)
    records, clicks = [], []
    for i in range(last or 0, (last or 0) + n):
        device = DEVICES[int(rng.integers(len(DEVICES)))]
        shared = SharedFeatures.build({"device": device}, at=START - START % 86_400 + 43_200)
        pick = rng.choice(len(keys), CANDIDATES, replace=False)
        scores = scorer.score(shared, [features[j] for j in pick])
        fresh = np.zeros(CANDIDATES, dtype=bool)
        picks = build_slate(scores, category[pick], fresh, kinds, exploration, rng)
        payload = DecisionPayload(
            context=shared.to_log(),
            candidate_revs=revs[pick].astype(np.uint32),
            candidate_flags=np.full(CANDIDATES, SIMILAR, dtype=np.uint8),
            candidate_dynamic=np.zeros(CANDIDATES, dtype=np.uint8),
            scores=scores.astype(np.float16),
            layout="".join(LAYOUT_CODES[kind] for kind in kinds[: len(picks)]),
            exploration=exploration.to_log(),
            chosen=np.array([p.index for p in picks], dtype=np.uint16),
            feature_spec=FEATURE_SPEC_VERSION,
        )
        chosen = [int(pick[p.index]) for p in picks]
        shown = tuple(
            ShownSlot(j, int(keys[c]), p.propensity, p.kind, "similar", float(scores[p.index]))
            for j, (c, p) in enumerate(zip(chosen, picks, strict=True))
        )
        # "vw": the policy that follows the champion, as serving logs it
        record = DecisionRecord(
            f"{i:032x}", START + i, f"u{i}", "vw", scorer.version, payload.encode(), shown
        )
        records.append(record)
        clicks.append([int(keys[c]) for c in chosen if clicked(device, rows[c].category)])
    with engine.begin() as conn:
        logged = DecisionRecord.write_many(conn, records)
        got = [
            {
                "decision_id": d.decision_id,
                "item_key": key,
                "type": "click",
                "reward": 1.0,
                "created_at": START + d.decision_id,
            }
            for d, keys_clicked in zip(logged, clicks, strict=True)
            for key in keys_clicked
        ]
        conn.execute(insert(rewards), got)


def _version(engine: Engine, settings: Settings) -> int:
    """A model trained, as the learner would, on every decision not held out."""
    scorer = VWScorer(settings.vw_args)
    with engine.connect() as conn:
        due = due_decisions(conn, 0, JUDGED, 100_000)
        revs = sorted({int(d.payload.candidate_revs[i]) for d in due for i in d.payload.chosen})
        snapshots = revision_snapshots(conn, revs)
    for decision in due:
        if decision.decision_id % EVERY == 0:
            continue
        shared = SharedFeatures.from_log(decision.payload.context)
        for slot, key, propensity in decision.slots:
            features = slot_features(decision.payload, slot, snapshots)
            reward = float(key in decision.rewards)
            scorer.learn(slot_example(shared, slot, features, reward, propensity))
    with engine.begin() as conn:
        return models.save_version(
            conn,
            parent=None,
            vw_args=scorer.args,
            feature_spec=FEATURE_SPEC_VERSION,
            examples=len(due),
            learned_through=due[-1].decision_id,
            model=scorer.to_bytes(),
        )


@dataclasses.dataclass(frozen=True)
class Log:
    settings: Settings
    engine: Engine
    champion: int
    challenger: int
    window: Window  # the gate's held-out decisions of the champion


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Log]:
    settings = make_settings(
        tmp_path_factory.mktemp("context"),
        learner="off",
        reward_wait=0,
        epsilon=0.3,
        gate_holdout_every=EVERY,
        gate_min_decisions=50,
        # The versions judged here, as the figures below were measured: VW's decaying rate.
        # (At the service's constant 0.05 the two versions differ more, and item means' DR,
        # the comparison, lands 0.014 below the truth with an interval that misses it.)
        vw_args="--cb_adf --cb_type dm -q ui -q ci -b 20",
    )
    seed_catalog(settings.database_url, ITEMS)
    engine = open_engine(settings.database_url)
    _log(engine, settings, VWScorer(settings.vw_args), 400, seed=1)  # an untrained model
    champion = _version(engine, settings)
    with engine.begin() as conn:
        models.promote(conn, champion, reason="test: the champion serves")
        data = models.model_bytes(conn, champion)
    scorer = VWScorer(settings.vw_args, version=champion, model_bytes=data)
    _log(engine, settings, scorer, 800, seed=2)  # the gate replays decisions the champion scored
    challenger = _version(engine, settings)
    window = held_out_window(engine, settings, champion, now=JUDGED)
    yield Log(settings, engine, champion, challenger, window)
    engine.dispose()


class Truth:
    """The log's click model as a reward model: DM with it is the estimand, exactly."""

    def __init__(self, engine: Engine, window: Window) -> None:
        with engine.connect() as conn:
            rows = conn.execute(select(items.c.key, items.c.category))
            self.category = {int(key): category for key, category in rows}
        self.device = {
            int(i): context["c"]["device"]
            for chunk, _ in read_chunks(engine, window)
            for i, context in zip(chunk.decision_ids, chunk.contexts, strict=True)
        }

    def item_values(self, decision_ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
        return np.array(
            [
                [k >= 0 and clicked(self.device[int(d)], self.category[int(k)]) for k in row]
                for d, row in zip(decision_ids, keys, strict=True)
            ],
            dtype=np.float64,
        )

    def continuation(
        self, decision_ids: np.ndarray, slot: np.ndarray, depth: np.ndarray
    ) -> np.ndarray:
        return np.zeros(len(slot))  # per-slot estimators only


def _item_means(engine: Engine, window: Window) -> RewardModel:
    """What replay fits when it is given no reward model."""
    means = RewardModel()
    for shown in read_shown(engine, window):
        means.add(shown.decision, shown.slot, shown.item, shown.reward)
    return means


def test_it_learns_only_decisions_the_versions_learned(log: Log) -> None:
    model = ContextRewardModel.fit(log.engine, log.settings, log.window)
    with log.engine.connect() as conn:
        learned = list(
            conn.execute(
                select(decisions.c.id)
                .where(decisions.c.id <= log.window.through, decisions.c.id % EVERY != 0)
                .order_by(decisions.c.id)
            ).scalars()
        )
        held_out = list(
            conn.execute(
                select(decisions.c.id).where(*log.window.where()).order_by(decisions.c.id)
            ).scalars()
        )
    assert len(held_out) > 100 and all(i % EVERY == 0 for i in held_out)
    # Fewer learned decisions than TRAIN_DECISIONS: all of them, up to the window's last id.
    assert model.trained.tolist() == learned
    assert model.predicted.tolist() == held_out
    # Bounded: the most recent ones only.
    recent = ContextRewardModel.fit(log.engine, log.settings, log.window, decisions=100)
    assert recent.trained.tolist() == learned[-100:]
    # A window of decisions it may have learned is refused, not predicted.
    with pytest.raises(ValueError, match="held-out decisions only"):
        ContextRewardModel.fit(log.engine, log.settings, dataclasses.replace(log.window, every=0))


def _ranking(
    model: ItemRewardModel, engine: Engine, window: Window, truth: Truth
) -> dict[str, float]:
    """Per device, the mean over decisions of the share of (clicked, not clicked) candidate
    pairs that ``model`` orders right (ties count half): 1 ranks every clicked item first."""
    shares: dict[str, list[float]] = {device: [] for device in DEVICES}
    for chunk, _ in read_chunks(engine, window):
        q = model.item_values(chunk.decision_ids, chunk.keys)
        liked = truth.item_values(chunk.decision_ids, chunk.keys) > 0
        for row, context in enumerate(chunk.contexts):
            valid = chunk.valid[row]
            good, bad = q[row][valid & liked[row]], q[row][valid & ~liked[row]]
            if len(good) and len(bad):
                pairs = (good[:, None] > bad[None, :]) + 0.5 * (good[:, None] == bad[None, :])
                shares[context["c"]["device"]].append(float(pairs.mean()))
    return {device: float(np.mean(s)) for device, s in shares.items()}


def test_it_ranks_what_each_device_clicks_above_the_rest(log: Log) -> None:
    """Measured: the context model orders every pair right on both devices; item means do no
    better than chance (0.51 on mobile, 0.49 on a desktop), each item being liked on one."""
    truth = Truth(log.engine, log.window)
    context = ContextRewardModel.fit(log.engine, log.settings, log.window)
    means = _item_means(log.engine, log.window)
    by_context = _ranking(context, log.engine, log.window, truth)
    by_means = _ranking(means, log.engine, log.window, truth)
    assert min(by_context.values()) > 0.95
    assert max(by_means.values()) < 0.6


def test_the_gates_dr_with_it_agrees_with_item_means_and_is_narrower(log: Log) -> None:
    """The gate's verdict (DR on the context model) against the same replay on item means: the
    same held-out decisions, policies, bootstrap and seed; and both against the estimand,
    computed exactly from the log's click model.

    Measured on 200 held-out decisions: the paired difference challenger - champion is
    -0.00003 [-0.00006, -0.00001] with the context model, +0.0037 [-0.025, +0.051] on item
    means; per version, intervals 0.006 wide instead of 0.043 and 0.097, and errors of 0.001
    against the estimand (0.8466 for both) instead of 0.007 and 0.003. A model this close
    leaves a paired interval narrower than its own small error: the true difference, 0, lies
    just outside it, far within the gate's margin (5% of 0.85) all the same."""
    verdict = evaluate(log.engine, log.settings, log.challenger, now=JUDGED)
    policies = (f"vw@{log.champion}", f"vw@{log.challenger}")
    options = ReplayOptions(policies, ("dr",), bootstrap=BOOTSTRAP, seed=log.challenger)
    on_means = replay(log.engine, log.settings, options, window=log.window)
    old, new = (on_means.accumulators[spec][0] for spec in policies)
    difference, low, high = paired_difference(new, old)
    context = ContextRewardModel.fit(log.engine, log.settings, log.window)
    on_context = replay(log.engine, log.settings, options, window=log.window, reward_model=context)
    exact = replay(
        log.engine,
        log.settings,
        dataclasses.replace(options, estimators=("dm",), bootstrap=0),
        window=log.window,
        reward_model=Truth(log.engine, log.window),
    )

    # The gate replayed with the context model: its figures are that replay's.
    assert verdict.decisions == on_means.n_decisions == on_context.n_decisions > 100
    values = {spec: estimates[0].value for spec, estimates in on_context.policies}
    assert verdict.challenger_value == pytest.approx(values[policies[1]])
    assert verdict.champion_value == pytest.approx(values[policies[0]])
    assert verdict.difference is not None and verdict.low is not None and verdict.high is not None
    # The same estimate within the item means' interval, in an interval a tenth as wide.
    assert low <= verdict.difference <= high
    assert verdict.high - verdict.low < 0.1 * (high - low)
    errors = []
    for (_, [m]), (_, [c]), (_, [t]) in zip(
        on_means.policies, on_context.policies, exact.policies, strict=True
    ):
        assert m.ci_low <= c.value <= m.ci_high
        assert c.ci_low <= t.value <= c.ci_high
        assert c.ci_high - c.ci_low < 0.5 * (m.ci_high - m.ci_low)
        errors.append((abs(c.value - t.value), abs(m.value - t.value)))
    worst_context, worst_means = (max(e) for e in zip(*errors, strict=True))
    assert worst_context < 0.5 * worst_means
    true_difference = exact.policies[1][1][0].value - exact.policies[0][1][0].value
    assert abs(verdict.difference - true_difference) < 0.1 * abs(difference - true_difference)
