"""The VW scorer with real Vowpal Wabbit: scores in candidate order, position kept out of item scores."""

from __future__ import annotations

import numpy as np
import pytest

from slatebandit.bandit import SharedFeatures, VWScorer, slot_example
from slatebandit.errors import ConfigError

ARGS = "--cb_adf --cb_type mtr -q ui -q ci -b 18"


def test_untrained_model_ties_and_scores_in_candidate_order() -> None:
    scorer = VWScorer(ARGS)
    tokens = ["", "c=a p=1", "c=b p=2", "c=a p=3"]
    shared = SharedFeatures.build({"device": "mobile"}, at=0)
    assert scorer.score(shared, [3, 1, 2], tokens).tolist() == [0.0, 0.0, 0.0]
    assert scorer.score(shared, [], tokens).shape == (0,)


def test_position_bias_does_not_leak_into_item_scores() -> None:
    """Clicks depend on item quality and on the slot (top slots get more). Because the slot is a
    shared, non-interacting feature, the learned ranking follows quality, not where items were
    usually shown: the best item, mostly shown low, still ranks first."""
    rng = np.random.default_rng(0)
    n_items, k = 8, 4
    quality = np.linspace(0.05, 0.4, n_items)  # item 7 is best
    slot_boost = np.array([0.4, 0.2, 0.1, 0.0])
    tokens = [f"c=cat{i % 3} p={i % 4}" for i in range(n_items)]
    scorer = VWScorer(ARGS)
    shared = SharedFeatures.build({"device": "web"}, at=0)
    for _ in range(6000):
        slate = rng.permutation(n_items)[:k]
        if rng.random() < 0.7:  # a biased logger: the best items mostly land in low slots
            slate = np.sort(slate)
        for slot, item in enumerate(slate):
            clicked = rng.random() < min(1.0, quality[item] + slot_boost[slot])
            lines = slot_example(shared, slot, int(item), tokens[item], float(clicked), 0.5)
            scorer.learn(lines)
    scores = scorer.score(shared, list(range(n_items)), tokens)
    assert int(np.argmax(scores)) == n_items - 1
    assert np.corrcoef(scores, quality)[0, 1] > 0.9


@pytest.mark.parametrize("args", ["--cb 4", "--cb_explore_adf --cb_adf", "--cb_adf --no_such_flag"])
def test_bad_vw_arguments_fail_at_start(args: str) -> None:
    with pytest.raises(ConfigError, match="VW"):
        VWScorer(args)


def test_slot_example_rejects_zero_propensity() -> None:
    with pytest.raises(ValueError, match="propensity"):
        slot_example(SharedFeatures({}), 0, 1, "c=a", 1.0, 0.0)
