"""The numpy scorer (``bandit/linear.py``) against real Vowpal Wabbit: the same scores as VW's
predict, from the same model, for every argument it takes on; VW's own path for the rest."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pylibvw
import pytest

from slatebandit.bandit import SharedFeatures, VWScorer, slot_example, valued, with_bands
from slatebandit.bandit.hashes import TokenHashes
from slatebandit.bandit.linear import LinearScorer, _options
from slatebandit.bandit.weights import read_weights
from slatebandit.config import Settings
from slatebandit.retrieval.content import item_tokens, scorer_features

DEFAULT = Settings.from_env({}).vw_args
ITEMS = [
    scorer_features(
        key,
        item_tokens(
            f"cat{key % 9}/sub{key % 31}",
            f"brand {key % 17}",
            float(key % 300),
            {"color": f"c{key % 5}", "size": key % 4} if key % 3 else {},
        ),
    )
    for key in range(2_000)
]


def shopper(rng: np.random.Generator) -> SharedFeatures:
    """A request as serving builds it: context, recent categories, valued profile tokens
    (some shoppers have none of either)."""
    recent = [f"cat{c}" for c in rng.integers(0, 9, rng.integers(0, 4))]
    profile = [valued(f"tc=cat{c}", float(rng.random())) for c in rng.integers(0, 9, 2)]
    context = {"page": str(rng.choice(["home", "item", "cart"])), "device": "ios"}
    return SharedFeatures.build(
        context, recent, at=float(rng.integers(0, 10**9)), profile=profile[: rng.integers(0, 3)]
    )


def trained(args: str, slates: int = 1_500, seed: int = 0) -> VWScorer:
    """A model learned from seeded slot examples, as the learner writes them."""
    rng = np.random.default_rng(seed)
    scorer = VWScorer(args)
    for _ in range(slates):
        shared = shopper(rng)
        keys, codes = rng.integers(0, len(ITEMS), 5), rng.integers(0, 256, 5)
        actions = with_bands([ITEMS[k] for k in keys], codes.tolist())
        slot = int(rng.integers(0, 5))
        reward = float(keys[slot] % 7 == 3 or rng.random() < 0.05)
        scorer.learn(slot_example(shared, slot, actions[slot], reward, 0.2))
    return scorer


@dataclass(eq=False)
class Shelf:
    """The two columns of a catalog the scorer reads (``bandit.hashes.Items``)."""

    features: list[str]
    rev: np.ndarray


def shelf() -> Shelf:
    return Shelf(list(ITEMS), np.ones(len(ITEMS), dtype=np.int64))


def candidates(rng: np.random.Generator, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    return rng.choice(len(ITEMS), n, replace=False), rng.integers(0, 256, n).astype(np.uint8)


def assert_scores_agree(scorer: VWScorer, items: Shelf | None = None, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    items = items or shelf()
    for _ in range(20):
        shared, (keys, codes) = shopper(rng), candidates(rng)
        fast = scorer.score_items(shared, items, keys, codes)
        statics = [items.features[k] for k in keys]
        vw = scorer.score(shared, with_bands(statics, codes.tolist()))  # VW's text
        np.testing.assert_allclose(fast, vw, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "args",
    [
        DEFAULT,
        "--cb_adf --cb_type ips -q ui -q ci -b 18",
        "--cb_adf --cb_type mtr -q ui -b 18 --noconstant",
        "--cb_adf --cb_type dm -q ci -b 20 --hash_seed 7 --hash all",
        "--cb_adf --cb_type dm -q ui -b 18 --sgd",  # one float a weight in the saved model
        "--cb_adf --cb_type dm -q ui -q ci -b 18 --adaptive -l 0.05 --power_t 0",  # two
    ],
)
def test_a_saved_model_scores_as_vw_predicts(args: str) -> None:
    loaded = VWScorer(args, model_bytes=trained(args).to_bytes(), version=3)
    assert loaded.fast
    assert_scores_agree(loaded)


def test_the_weights_read_from_a_saved_model_are_vws_own() -> None:
    data = trained(DEFAULT).to_bytes()
    loaded = VWScorer(DEFAULT, model_bytes=data)
    workspace = loaded._vw
    expected = np.zeros(pylibvw.vw.num_weights(workspace), dtype=np.float32)
    for entry in json.loads(pylibvw.vw.json_weights(workspace))["weights"]:
        expected[entry["index"]] = entry["value"]
    assert np.count_nonzero(expected) > 10_000
    np.testing.assert_array_equal(read_weights(workspace, data), expected)


def test_bytes_that_are_not_the_model_are_refused() -> None:
    data = trained(DEFAULT, slates=300).to_bytes()
    workspace = VWScorer(DEFAULT, model_bytes=data)._vw
    assert read_weights(workspace, data + b"\x01\x02\x03") is None  # records misaligned
    assert read_weights(workspace, data[:-1]) is None


def test_a_fresh_model_scores_zero_and_learning_hands_scoring_back_to_vw() -> None:
    scorer = VWScorer(DEFAULT)
    assert scorer.fast
    rng = np.random.default_rng(4)
    keys, codes = candidates(rng, 50)
    assert scorer.score_items(shopper(rng), shelf(), keys, codes).tolist() == [0.0] * 50
    learning = trained(DEFAULT, slates=200)  # its copy of the weights would be stale
    assert not learning.fast
    assert_scores_agree(learning)


@pytest.mark.parametrize(
    "args",
    [
        "--cb_adf -q ui -q ci --cubic uci -b 18",
        "--cb_adf -q ii -b 18",
        "--cb_adf -q id -b 18",
        "--cb_adf -q ui --ignore d -b 18",
        "--cb_adf -q ui -b 26",
        "--cb_adf -q ui -q ci -b 18 --l2 0.001",  # VW scales each predict
        "--cb_adf -q ui -q ci -b 18 --l1 0.00001",  # VW truncates small weights
    ],
)
def test_arguments_it_does_not_follow_keep_vws_own_path(args: str) -> None:
    scorer = VWScorer(args, model_bytes=trained(args, slates=300).to_bytes())
    assert not scorer.fast
    assert LinearScorer.build(scorer._vw, None, args) is None
    assert_scores_agree(scorer)


@pytest.mark.parametrize(
    ("words", "interactions"),
    [
        ("--cb_adf --cb_type dm --quadratic ui --quadratic ci --bit_precision 20", "ui ci"),
        ("--cb_adf --cb_type mtr --csoaa_ldf multiline --csoaa_rank --l1 0.1", None),
        ("--cb_adf --cb_type dr --quadratic ui", None),  # a cost type it was not shown to follow
        ("--cb_adf --csoaa_ldf mc", None),
        ("--cb_adf --ignore d", None),
        ("--cb_adf --interactions ui --quiet --no_stdin", "ui"),
        ("--cb_adf --quadratic ::", "::"),  # parsed; LinearScorer.build refuses the wildcard
    ],
)
def test_options_are_followed_or_refused(words: str, interactions: str | None) -> None:
    options = _options(words.split())
    assert (options and options["interactions"]) == interactions


def test_a_model_whose_numpy_scores_disagree_with_vw_is_served_by_vw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = trained(DEFAULT, slates=300).to_bytes()
    right = LinearScorer._score
    monkeypatch.setattr(LinearScorer, "_score", lambda *a: right(*a) + 1e-3)
    assert not VWScorer(DEFAULT, model_bytes=data).fast  # the load's check on a made-up slate


def test_an_item_is_hashed_again_when_its_revision_changes() -> None:
    scorer = VWScorer(DEFAULT, model_bytes=trained(DEFAULT, slates=500).to_bytes())
    items = shelf()
    assert_scores_agree(scorer, items)
    rng = np.random.default_rng(9)
    for key in rng.choice(len(ITEMS), 500, replace=False):  # new content, a new revision
        items.features[key] = scorer_features(key, item_tokens("cat3/new", "b", 1.0, {}))
        items.rev[key] += 1
    assert_scores_agree(scorer, items)


def test_the_item_table_packs_its_pool_and_keeps_every_hash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(TokenHashes, "TOKENS", 40)  # the token caches cleared again and again
    monkeypatch.setattr(TokenHashes, "_shared", {})
    scorer = VWScorer(DEFAULT, model_bytes=trained(DEFAULT, slates=500).to_bytes())
    items = shelf()
    for round_ in range(6):  # every item revised each round: the old hashes are garbage
        items.rev += 1
        assert_scores_agree(scorer, items, seed=round_)
    table = scorer._linear.hashes.table(items)  # type: ignore[union-attr]
    live = int(table.count[table.hashed].sum())
    assert table.used >= live and len(table.pool) <= max(4096, 3 * live)
    assert all(len(tokens) <= 40 for tokens in scorer._linear.hashes._tokens.values())  # type: ignore[union-attr]


def test_no_candidates_and_mismatched_codes() -> None:
    scorer = VWScorer(DEFAULT)
    shared = shopper(np.random.default_rng(0))
    none = np.zeros(0, dtype=np.int64)
    assert scorer.score_items(shared, shelf(), none, np.zeros(0, np.uint8)).shape == (0,)
    with pytest.raises(ValueError, match="2 candidates but 1 band codes"):
        scorer.score_items(shared, shelf(), np.arange(2), np.zeros(1, np.uint8))
