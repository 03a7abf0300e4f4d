"""The VW scorer with real Vowpal Wabbit: scores in candidate order, position kept out."""

from __future__ import annotations

import numpy as np
import pytest

from slatebandit.bandit import (
    FEATURE_SPEC_VERSION,
    SharedFeatures,
    VWScorer,
    action_features,
    candidate_features,
    dynamic_tokens,
    return_freed_memory,
    slot_example,
    trim_freed_memory,
)
from slatebandit.errors import ConfigError

ARGS = "--cb_adf --cb_type mtr -q ui -q ci -b 18"


def test_untrained_model_ties_and_scores_in_candidate_order() -> None:
    scorer = VWScorer(ARGS)
    tokens = ["k0", "k1 c=a p=1", "k2 c=b p=2", "k3 c=a p=3"]
    shared = SharedFeatures.build({"device": "mobile"}, at=0)
    assert scorer.score(shared, [tokens[3], tokens[1], tokens[2]]).tolist() == [0.0, 0.0, 0.0]
    assert scorer.score(shared, []).shape == (0,)


def test_position_bias_does_not_leak_into_item_scores() -> None:
    """Clicks depend on item quality and on the slot (top slots get more). Because the slot is a
    shared, non-interacting feature, the learned ranking follows quality, not where items were
    usually shown: the best item, mostly shown low, still ranks first."""
    rng = np.random.default_rng(0)
    n_items, k = 8, 4
    quality = np.linspace(0.05, 0.4, n_items)  # item 7 is best
    slot_boost = np.array([0.4, 0.2, 0.1, 0.0])
    tokens = [f"k{i} c=cat{i % 3} p={i % 4}" for i in range(n_items)]
    scorer = VWScorer(ARGS)
    shared = SharedFeatures.build({"device": "web"}, at=0)
    for _ in range(6000):
        slate = rng.permutation(n_items)[:k]
        if rng.random() < 0.7:  # a biased logger: the best items mostly land in low slots
            slate = np.sort(slate)
        for slot, item in enumerate(slate):
            clicked = rng.random() < min(1.0, quality[item] + slot_boost[slot])
            lines = slot_example(shared, slot, tokens[item], float(clicked), 0.5)
            scorer.learn(lines)
    scores = scorer.score(shared, tokens)
    assert int(np.argmax(scores)) == n_items - 1
    assert np.corrcoef(scores, quality)[0, 1] > 0.9


def test_fast_predict_path_agrees_with_pyvw() -> None:
    rng = np.random.default_rng(2)
    scorer = VWScorer(ARGS)
    tokens = [f"k{i} c=c{i % 5} b=b{i % 7} p={i % 4}" for i in range(60)]
    shared = SharedFeatures.build({"device": "app"}, ["c1"], at=0)
    for _ in range(500):
        item = int(rng.integers(60))
        scorer.learn(slot_example(shared, 0, tokens[item], float(item % 3 == 0), 0.3))
    keys = rng.permutation(60)[:40].tolist()
    lines = [shared.line(), *(f"|i {tokens[key]}" for key in keys)]
    expected = -np.asarray(scorer._vw.predict(lines))
    np.testing.assert_allclose(scorer.score(shared, [tokens[k] for k in keys]), expected)
    assert len(set(np.round(expected, 6))) > 5  # a trained model, not all ties


@pytest.mark.parametrize("args", ["--cb 4", "--cb_explore_adf --cb_adf", "--cb_adf --no_such_flag"])
def test_bad_vw_arguments_fail_at_start(args: str) -> None:
    with pytest.raises(ConfigError, match="VW"):
        VWScorer(args)


def test_slot_example_rejects_zero_propensity() -> None:
    with pytest.raises(ValueError, match="propensity"):
        slot_example(SharedFeatures({}), 0, "k1 c=a", 1.0, 0.0)


def test_a_saved_model_scores_the_same_after_loading() -> None:
    scorer = VWScorer(ARGS)
    tokens = [f"k{i} c=c{i % 3}" for i in range(10)]
    shared = SharedFeatures.build({"device": "app"}, at=0)
    for i in range(300):
        scorer.learn(slot_example(shared, i % 4, tokens[i % 10], float(i % 10 < 3), 0.5))
    loaded = VWScorer(ARGS, version=7, model_bytes=scorer.to_bytes())
    assert loaded.version == 7
    np.testing.assert_allclose(loaded.score(shared, tokens), scorer.score(shared, tokens))


def test_models_load_and_score_with_glibc_returning_freed_memory() -> None:
    """Workers fix glibc's mmap threshold and trim its heaps after each model they drop
    (``return_freed_memory``, ``trim_freed_memory``); VW must not mind."""
    assert return_freed_memory()  # glibc (this machine and CI) takes both settings
    scorer = VWScorer(ARGS)
    tokens = [f"k{i}" for i in range(20)]
    shared = SharedFeatures.build({"device": "app"}, at=0)
    for i in range(200):
        scorer.learn(slot_example(shared, i % 4, tokens[i % 20], float(i % 20 < 4), 0.5))
    data, expected = scorer.to_bytes(), scorer.score(shared, tokens)
    for version in range(1, 21):
        loaded = VWScorer(ARGS, version=version, model_bytes=data)
        np.testing.assert_allclose(loaded.score(shared, tokens), expected)
        del loaded
        trim_freed_memory()


def test_features_follow_the_spec_each_decision_was_scored_with() -> None:
    """Replay and the learner build a logged candidate's features with the decision's own
    spec: before spec 4 the bands sat in the item namespace, now in their own (``d``)."""
    assert action_features("k1 c=x", 0x21, 3) == "k1 c=x pop=2 age=1"
    assert action_features("k1 c=x", 0x21) == "k1 c=x |d pop=2 age=1"
    assert FEATURE_SPEC_VERSION >= 4
    # Serving formats all candidates at once, as action_features does one by one.
    features = ["k0 c=a", "k1 c=b", "k2 c=c"]
    keys, codes = [2, 0, 2, 1], [0, 0x21, 0xFF, 0x9C]
    assert candidate_features(features, keys, codes) == [
        action_features(features[k], c) for k, c in zip(keys, codes, strict=True)
    ]
    assert [dynamic_tokens(c) for c in (0, 0xF3)] == ["pop=0 age=0", "pop=15 age=3"]


@pytest.mark.parametrize(
    ("token", "rendered"),
    [
        ("tc=men/shoes:0.6", "tc=men/shoes:0.6"),  # a share: VW's feature value
        ("tc=a:b:0.25", "tc=a_b:0.25"),  # a colon inside the name is cleaned away
        ("bc=x:y", "bc=x_y"),  # no number after the colon: a plain token
        ("bc=x:nan", "bc=x_nan"),  # nor a finite one
        ("bc=x:inf", "bc=x_inf"),
        ("np=2", "np=2"),
        ("tc=Men Shoes", "tc=men_shoes"),
    ],
)
def test_profile_tokens_keep_their_value_and_lose_vw_separators(token: str, rendered: str) -> None:
    line = SharedFeatures({}, (), (token,)).line()
    assert line == f"shared |u {rendered} |c "
