"""Off-policy estimators: invariants on seeded synthetic logs with known ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from slatebandit.replay import (
    DM,
    DR,
    IPS,
    SNIPS,
    Bootstrap,
    CascadeDR,
    CascadeIPS,
    make_estimator,
)

CONTEXTS, ITEMS, SLOTS = 3, 6, 2


def _softmax(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    weights = np.where(allowed, np.exp(scores - scores.max(axis=-1, keepdims=True)), 0.0)
    return weights / weights.sum(axis=-1, keepdims=True)


class World:
    """Contexts, items with Bernoulli click rates, a softmax logger and a softmax target."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.q = rng.uniform(0.05, 0.5, size=(CONTEXTS, ITEMS))
        self.logger_scores = rng.normal(0, 1.0, size=(CONTEXTS, ITEMS))
        self.target_scores = 3 * self.q + rng.normal(0, 0.3, size=(CONTEXTS, ITEMS))

    def pmf(self, scores: np.ndarray, x: np.ndarray, shown: np.ndarray | None) -> np.ndarray:
        allowed = np.ones((len(x), ITEMS), dtype=bool)
        if shown is not None:
            allowed[np.arange(len(x)), shown] = False
        return _softmax(scores[x], allowed)

    def log(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """n decisions of SLOTS slots, flattened in (decision, slot) order."""
        x = rng.integers(0, CONTEXTS, size=n)
        first, columns = None, []
        for _ in range(SLOTS):
            p0 = self.pmf(self.logger_scores, x, first)
            pe = self.pmf(self.target_scores, x, first)
            pick = (p0.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
            every = np.arange(n)
            click = rng.random(n) < self.q[x, pick]
            columns.append((pick, p0[every, pick], pe[every, pick], click, pe @ np.eye(ITEMS), x))
            first = pick
        out: dict[str, np.ndarray] = {}
        for name, i in (("item", 0), ("p_log", 1), ("p_target", 2), ("reward", 3)):
            out[name] = np.stack([c[i] for c in columns], axis=1).reshape(-1).astype(float)
        out["decision"] = np.repeat(np.arange(n), SLOTS)
        out["x"] = np.repeat(x, SLOTS)
        pe_all = np.stack([c[4] for c in columns], axis=1).reshape(n * SLOTS, ITEMS)
        out["pe_all"] = pe_all
        return out

    def truths(self) -> tuple[float, float]:
        """Per-slot estimand (earlier slots as the logger filled them) and the target's true
        value (the cascade estimand), both per slot, by enumeration."""
        per_slot = cascade = 0.0
        for x in range(CONTEXTS):
            xs = np.array([x])
            pe0 = self.pmf(self.target_scores, xs, None)[0]
            p00 = self.pmf(self.logger_scores, xs, None)[0]
            first = pe0 @ self.q[x]
            per_slot += first
            cascade += first
            for a0 in range(ITEMS):
                pe1 = self.pmf(self.target_scores, xs, np.array([a0]))[0]
                second = pe1 @ self.q[x]
                per_slot += p00[a0] * second
                cascade += pe0[a0] * second
        return per_slot / CONTEXTS / SLOTS, cascade / CONTEXTS / SLOTS


def _feed(estimator, log, q_hat):  # type: ignore[no-untyped-def]
    item = log["item"].astype(int)
    x = log["x"].astype(int)
    estimator.add(
        log["p_log"],
        log["reward"],
        log["p_target"],
        decision=log["decision"],
        q_logged=q_hat[x, item],
        q_target=(log["pe_all"] * q_hat[x]).sum(axis=1),
    )
    return estimator.get()


@pytest.mark.parametrize("interval", ["bootstrap", "gaussian"])
def test_intervals_cover_the_truth_in_at_least_90_of_100_seeded_trials(interval: str) -> None:
    world = World(seed=1)
    per_slot, value = world.truths()
    truth = {"ips": per_slot, "snips": per_slot, "dr": per_slot}
    truth |= {"cascade-ips": value, "cascade-dr": value}
    covered = dict.fromkeys(truth, 0)
    for trial in range(100):
        rng = np.random.default_rng(1000 + trial)
        log = world.log(3000, rng)
        q_hat = world.q + rng.normal(0, 0.05, size=world.q.shape)  # an imperfect reward model
        for name in truth:
            bootstrap = Bootstrap(200, seed=trial) if interval == "bootstrap" else None
            estimate = _feed(make_estimator(name, bootstrap), log, q_hat)
            covered[name] += estimate.ci_low <= truth[name] <= estimate.ci_high
    assert all(count >= 90 for count in covered.values()), covered


@pytest.mark.parametrize("cls", [SNIPS, DM, DR, CascadeDR])
def test_constant_reward_gives_exactly_that_value(cls) -> None:  # type: ignore[no-untyped-def]
    """With every reward c (and a reward model that says c), the estimate is c, whatever the
    weights. For cascade-dr the model's tail is c per slot below."""
    rng = np.random.default_rng(3)
    n, c = 4000, 0.37
    decision = np.repeat(np.arange(n // 4), 4)
    slot = np.tile(np.arange(4), n // 4)
    q = np.full(n, c) + (c * (3 - slot) if cls is CascadeDR else 0.0)
    estimator = cls(Bootstrap(100, seed=1))
    p_log, p_target = rng.uniform(0.01, 1, n), rng.uniform(0, 1, n)
    estimator.add(p_log, np.full(n, c), p_target, decision=decision, q_logged=q, q_target=q)
    estimate = estimator.get()
    assert estimate.value == pytest.approx(c, rel=1e-12)
    assert estimate.ci_low == pytest.approx(c, rel=1e-9)
    assert estimate.ci_high == pytest.approx(c, rel=1e-9)


@pytest.mark.parametrize("cls", [IPS, CascadeIPS])
def test_constant_reward_under_the_logging_policy_is_exact(cls) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    p = rng.uniform(0.01, 1, 1000)
    estimator = cls()
    estimator.add(p, np.full(1000, 2.5), p, decision=np.repeat(np.arange(250), 4))
    assert estimator.get().value == pytest.approx(2.5, rel=1e-12)


def test_snips_stays_within_the_reward_range() -> None:
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n = 200
        reward = rng.uniform(-1, 2, n)
        estimator = SNIPS()
        p_log = rng.uniform(1e-4, 1, n)  # extreme weights
        estimator.add(p_log, reward, rng.uniform(0, 1, n))
        assert reward.min() <= estimator.get().value <= reward.max()


def test_the_same_seed_gives_the_same_result_and_merging_equals_one_pass() -> None:
    world = World(seed=2)
    log = world.log(3000, np.random.default_rng(5))
    q_hat = world.q
    first = _feed(DR(Bootstrap(300, seed=9)), log, q_hat)
    again = _feed(DR(Bootstrap(300, seed=9)), log, q_hat)
    other = _feed(DR(Bootstrap(300, seed=10)), log, q_hat)
    assert first == again
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)

    half = len(log["item"]) // 2  # at a decision boundary: SLOTS divides it
    parts = []
    for part in (slice(0, half), slice(half, None)):
        piece = {k: v[part] for k, v in log.items()}
        estimator = DR(Bootstrap(300, seed=9))
        _feed(estimator, piece, q_hat)
        parts.append(estimator)
    merged = (parts[0] + parts[1]).get()
    assert merged.value == pytest.approx(first.value, rel=1e-12)
    assert merged.ci_low == pytest.approx(first.ci_low, rel=1e-9)
    assert merged.ci_high == pytest.approx(first.ci_high, rel=1e-9)
    assert merged.ess == pytest.approx(first.ess, rel=1e-12)


def test_more_data_gives_a_tighter_interval() -> None:
    world = World(seed=3)
    widths = []
    for n in (500, 5000):
        estimate = _feed(
            IPS(Bootstrap(300, seed=1)), world.log(n, np.random.default_rng(n)), world.q
        )
        widths.append(estimate.ci_high - estimate.ci_low)
    assert widths[1] < widths[0] / 2


def test_ess_and_max_weight() -> None:
    estimator = IPS()
    estimator.add(np.array([0.5, 0.5, 0.5, 0.5]), np.zeros(4), np.array([1.0, 0.5, 0.0, 0.0]))
    estimate = estimator.get()
    assert estimate.max_weight == 2.0
    assert estimate.ess == pytest.approx(9 / 5)  # (2 + 1)^2 / (4 + 1)


def test_clipping_caps_the_weights() -> None:
    estimator = make_estimator("clipped-ips", clip=5.0)
    estimator.add(np.array([0.01, 0.5]), np.array([1.0, 1.0]), np.array([1.0, 0.5]))
    estimate = estimator.get()
    assert estimate.estimator == "clipped-ips"
    assert estimate.max_weight == 5.0
    assert estimate.value == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("p_log", "reward", "p_target", "decision", "match"),
    [
        ([0.0], [1.0], [0.5], None, "`p_log` must be in"),
        ([1.5], [1.0], [0.5], None, "`p_log` must be in"),
        ([0.5], [1.0], [-0.1], None, "`p_target` must be in"),
        ([0.5], [np.nan], [0.5], None, "`reward` must be finite"),
        ([0.5, 0.5], [1.0], [0.5, 0.5], None, "same length"),
        ([0.5, 0.5], [1.0, 1.0], [0.5, 0.5], [2, 1], "`decision` must be sorted"),
    ],
)
def test_bad_input_names_the_argument(p_log, reward, p_target, decision, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        IPS().add(np.array(p_log), np.array(reward), np.array(p_target), decision=decision)


def test_estimator_names() -> None:
    names = ["ips", "snips", "dm", "dr", "cascade-ips", "cascade-dr", "clipped-dr"]
    assert [make_estimator(n, clip=10.0).get().estimator for n in names] == names
    for bad in ("ipw", "clipped-dm"):
        with pytest.raises(ValueError, match="unknown estimator"):
            make_estimator(bad)


def test_bootstrap_weights_do_not_depend_on_chunking() -> None:
    ids = np.arange(1000, 1600)
    whole = Bootstrap(50, seed=4).weights(ids)
    parts = np.vstack(
        [Bootstrap(50, seed=4).weights(ids[:250]), Bootstrap(50, 4).weights(ids[250:])]
    )
    assert np.array_equal(whole, parts)
    assert whole.mean() == pytest.approx(1.0, abs=0.02)  # Poisson(1)
    assert whole.var() == pytest.approx(1.0, abs=0.05)


def test_bootstrap_counts_are_the_inverse_poisson_cdf_of_each_hash() -> None:
    """The weights are the searched inverse CDF of ``_splitmix64`` hashes, as first written;
    the table lookup and the in-place mixing only make them faster (identical counts, so
    identical intervals)."""
    from slatebandit.replay.bootstrap import _CDF, _count_table, _lookup

    mask = np.uint64(0xFFFFFFFFFFFFFFFF)

    def _splitmix64(x: np.ndarray) -> np.ndarray:  # the mixer as first written, masks and all
        with np.errstate(over="ignore"):
            x = (x + np.uint64(0x9E3779B97F4A7C15)) & mask
            x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & mask
            x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & mask
            return x ^ (x >> np.uint64(31))

    table = _count_table()
    every = np.arange(2**24, dtype=np.float64) * 2.0**-24
    assert np.array_equal(table, np.searchsorted(_CDF, every, side="right"))
    looked_up = np.empty(2**24, dtype=np.uint8)  # the two-level lookup, on every 24-bit value
    _lookup(np.arange(2**24, dtype=np.uint64), looked_up)
    assert np.array_equal(looked_up, table)

    bootstrap = Bootstrap(300, seed=9)  # more than one block of replicates
    ids = np.array([1, 2, 3, 10**9, 2**40 + 7], dtype=np.int64)
    # A PostgreSQL id counts as its sequence number (logging.partitions): 2**40 + 7 as 7.
    sequence = ids & (2**40 - 1)
    stream = _splitmix64(sequence.astype(np.uint64) ^ bootstrap._key)[:, None]
    with np.errstate(over="ignore"):
        bits = _splitmix64(stream * np.uint64(0x100000001B3) + np.arange(300, dtype=np.uint64))
    uniform = (bits >> np.uint64(40)).astype(np.float64) * 2.0**-24
    assert np.array_equal(bootstrap.weights(ids), np.searchsorted(_CDF, uniform, side="right"))
    assert np.array_equal(bootstrap.weights(ids)[4], bootstrap.weights(np.array([7]))[0])


def test_deferred_bootstrap_sums_equal_the_count_matrix_product() -> None:
    """Estimators hand their sums to ``add_totals``; the one fused pass at ``flush`` gives the
    product of the whole count matrix, and a copy (pickle, for another process) loses none."""
    import pickle

    rng = np.random.default_rng(5)
    bootstrap = Bootstrap(150, seed=2)  # more than two blocks of replicates
    first, second = np.arange(10, 410), np.arange(2**40 + 1, 2**40 + 301)
    values = [rng.random((400, 2)), rng.random((400, 3)), rng.random((300, 2))]
    into = [np.zeros((150, 2)), np.zeros((150, 3)), np.zeros((150, 2))]
    bootstrap.add_totals(first, values[0], into[0])
    bootstrap.add_totals(first, values[1], into[1])
    assert not into[0].any()  # waiting for the decisions' other sums
    bootstrap.add_totals(second, values[2], into[2])  # other decisions: the first two are made
    assert into[0].any() and not into[2].any()
    copied = pickle.loads(pickle.dumps((bootstrap, into)))  # flushes before copying
    for (ids, value), out in zip(
        ((first, values[0]), (first, values[1]), (second, values[2])), into, strict=True
    ):
        expected = bootstrap.weights(ids).T.astype(np.float64) @ value
        assert np.allclose(out, expected, rtol=1e-12)
    assert np.array_equal(copied[1][2], into[2])
    assert np.allclose(Bootstrap(150, seed=2).totals(second, values[2]), into[2], rtol=1e-12)


def test_item_means_fitted_in_slices_add_up_to_one_fit() -> None:
    from slatebandit.replay.reward_model import RewardModel

    rng = np.random.default_rng(6)
    ids = np.arange(1, 601)
    slot, item = rng.integers(0, 4, 600), rng.integers(0, 50, 600)
    slot[:200], item[:200] = slot[:200] % 2, item[:200] % 30  # the left slice knows fewer
    reward = rng.random(600)
    whole, left, right = RewardModel(), RewardModel(), RewardModel()
    whole.add(ids, slot, item, reward)
    left.add(ids[:200], slot[:200], item[:200], reward[:200])
    right.add(ids[200:], slot[200:], item[200:], reward[200:])
    keys = np.stack([np.arange(60), np.arange(60)])
    merged = left + right
    assert np.allclose(merged.item_values(ids[:2], keys), whole.item_values(ids[:2], keys))
    depth = np.full(600, 4)
    assert np.allclose(merged.continuation(ids, slot, depth), whole.continuation(ids, slot, depth))
