"""VW's ``--cb_adf`` predict, redone with numpy from VW's own hashes and weights.

A slate's scoring through VW writes about 200 lines of text, which VW then parses and hashes
token by token before its dot products. Every one of those tokens but the shopper's is the
same from slate to slate: an item's features change only with its catalog revision. So we
hash each item once per revision with VW's own hash (``bandit/hashes.py``), and score with
VW's weights, read from the saved model once per version (``bandit/weights.py``):

    score_j = -(w . x_j),  x_j = the shared features, candidate j's own (namespaces i and d),
                               the constant, and each pair (a, f) of an interaction "ui"
                               (a shared, f the item's) at index (hash(a) * FNV) ^ hash(f)

which is the index VW gives a quadratic feature (``interactions_predict.h``: the first
namespace's index times the FNV prime, xor the second's), within the weight mask. A test holds
these scores equal to VW's predict, to float precision, for the default arguments and the
other cost types; ``LinearScorer.build`` answers None for any argument it does not reproduce
(cubic or wildcard interactions, ignored namespaces, ``--l1``, ``--l2``, over 24 bits), and
the scorer then keeps VW's own text path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pylibvw

from slatebandit.bandit.features import SharedFeatures
from slatebandit.bandit.hashes import SHARED, STATIC, Items, TokenHashes
from slatebandit.bandit.weights import read_weights

FNV_PRIME = 16777619  # VW's multiplier of the first index of a quadratic feature
CONSTANT_HASH = 11650396  # VW's constant feature (``constant.h``)

# VW's options that change how it learns or talks, and nothing a predict computes.
_LEARNING_ONLY = {
    "--cb_adf",
    "--csoaa_ldf",
    "--csoaa_rank",
    "--learning_rate",
    "--power_t",
    "--initial_t",
    "--decay_learning_rate",
    "--random_seed",
    "--adaptive",
    "--normalized",
    "--invariant",
    "--sgd",
    "--no_stdin",
    "--initial_regressor",
    "--quiet",
}
# Options that change a predict in ways LinearScorer follows.
_FOLLOWED = {
    "--bit_precision",
    "--hash_seed",
    "--hash",
    "--noconstant",
    "--quadratic",
    "--interactions",
}
# Options that change a predict in ways it does not (VW shrinks the weights or scales each
# predict by state kept in the model), and which a loaded model does not report: looked for
# in the arguments the model was trained with.
_REFUSED = {"--l1", "--l2"}
_COST_TYPES = {"dm", "ips", "mtr"}  # each predicts with the same linear regressor


# Crossed shopper tokens from which each distinct item token is crossed once (one sort of
# the slate's item features) rather than once per candidate: a shopper with a history crosses
# 16 to 19 and saves about 100 us a slate that way; with only the request's context (4) the
# sort cost 20 us more than it saved (``benchmarks/slate_path.py --stages``).
CROSS_DISTINCT_FROM = 6


class LinearScorer:
    """Expected rewards of the candidates of one slate, without VW's text: see the module."""

    def __init__(
        self,
        weights: np.ndarray,
        hashes: TokenHashes,
        interactions: Sequence[str],
        constant: bool = True,
    ) -> None:
        self.weights = weights  # float32, one per weight index
        self.mask = len(weights) - 1
        self.hashes = hashes
        self.crossed = tuple(pair[0] for pair in interactions)  # shared namespaces x "i"
        self.constant = float(weights[CONSTANT_HASH & self.mask]) if constant else 0.0
        # Each packed band byte's two weights, summed once: a candidate's namespace d.
        self.band_costs = weights[hashes.bands & np.uint32(self.mask)].sum(axis=1, dtype=np.float64)

    @classmethod
    def build(
        cls, workspace: Any, model_bytes: bytes | None, trained_with: str = ""
    ) -> LinearScorer | None:
        """The linear scorer of a VW workspace (loaded from ``model_bytes``, or fresh, and
        trained with the arguments ``trained_with``), or None if its arguments ask for
        something this module does not reproduce."""
        options = _options(str(workspace.get_arguments()).split())
        if options is None or _REFUSED & set(trained_with.split()):
            return None
        interactions = options.get("interactions", "").split()
        if any(
            len(pair) != 2 or pair[0] not in SHARED or pair[1] != STATIC for pair in interactions
        ):
            return None
        size = pylibvw.vw.num_weights(workspace)
        if size > 1 << 24:
            return None  # past 64 MB a dense copy costs more than VW's text saves
        weights = read_weights(workspace, model_bytes)
        if weights is None:
            return None
        seed, mode = int(options.get("--hash_seed", 0)), options.get("--hash", "strings")
        hashes = TokenHashes.for_options(seed, mode, size.bit_length() - 1)
        return cls(weights, hashes, interactions, constant="--noconstant" not in options)

    def score(
        self, shared: SharedFeatures, catalog: Items, keys: np.ndarray, codes: np.ndarray
    ) -> np.ndarray:
        """Expected reward (VW's cost, negated) of each candidate: item ``keys`` of
        ``catalog``, with packed band bytes ``codes``."""
        if len(codes) != len(keys):
            raise ValueError(f"{len(keys)} candidates but {len(codes)} band codes")
        items, counts = self.hashes.table(catalog).lookup(catalog, keys)
        return self._score(shared, items, counts, codes)

    def score_statics(
        self, shared: SharedFeatures, statics: Sequence[str], codes: np.ndarray
    ) -> np.ndarray:
        """``score`` of candidates given by their static features (``Catalog.features``)."""
        if len(codes) != len(statics):
            raise ValueError(f"{len(statics)} candidates but {len(codes)} band codes")
        items, counts = self.hashes.statics(statics)
        return self._score(shared, items, counts, codes)

    def _score(
        self, shared: SharedFeatures, items: np.ndarray, counts: np.ndarray, codes: np.ndarray
    ) -> np.ndarray:
        n = len(counts)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        w, mask = self.weights, self.mask
        items = items & np.uint32(mask)
        owner = np.repeat(np.arange(n), counts)

        # The shared features: linear terms (the same for every candidate), and the crossed
        # namespaces' features against every item feature, in one (shared x item) table.
        shared_index, shared_value, crossed = [], [], []
        for namespace, tokens in zip(SHARED, shared.namespaces(), strict=True):
            if tokens:
                index, value = self._shared(namespace, tokens)
                shared_index.append(index)
                shared_value.append(value)
                crossed.append(namespace in self.crossed)
        per_feature = w.take(items).astype(np.float64)
        total = self.constant
        if shared_index:
            index, value = np.concatenate(shared_index), np.concatenate(shared_value)
            total += float(value @ w.take(index & mask))
            rows = np.repeat(crossed, [len(i) for i in shared_index])
            if rows.any():
                index, value = index[rows], value[rows].astype(np.float32)
                first = ((index * np.uint64(FNV_PRIME)) & np.uint64(mask)).astype(np.uint32)
                if len(first) < CROSS_DISTINCT_FROM:
                    per_feature += value @ w.take(first[:, None] ^ items[None, :])
                else:
                    # Candidates share most of their tokens (a slate's 1,450 item features
                    # held 385 distinct hashes, measured): each distinct one is crossed once,
                    # a quarter of the random reads of the weights, for one sort.
                    distinct, inverse = np.unique(items, return_inverse=True)
                    per_feature += (value @ w.take(first[:, None] ^ distinct[None, :]))[inverse]
        costs: np.ndarray = np.bincount(owner, per_feature, n)
        costs += self.band_costs[codes]
        costs += total
        return 0.0 - costs  # 0.0 - x: no -0.0 in answers, as VWScorer.score_text

    def _shared(self, namespace: str, tokens: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hashes (uint64) and values of a shared namespace's tokens (``name`` or
        ``name:value``, as ``SharedFeatures.line`` writes them)."""
        index, value = [], []
        for token in tokens:
            name, colon, number = token.rpartition(":")
            if not colon:
                name, number = token, "1"
            index.append(self.hashes.token(namespace, name))
            value.append(float(number))
        return np.array(index, dtype=np.uint64), np.array(value, dtype=np.float64)


def _options(words: list[str]) -> dict[str, str] | None:
    """VW's reported arguments as {option: value}, interactions gathered under
    ``"interactions"``; None if any option changes what a predict computes in a way
    ``LinearScorer`` does not follow."""
    options: dict[str, str] = {}
    pairs: list[str] = []
    i = 0
    while i < len(words):
        name = words[i]
        value = ""
        if i + 1 < len(words) and not words[i + 1].startswith("--"):
            value = words[i + 1]
            i += 1
        i += 1
        if name not in _LEARNING_ONLY and name not in _FOLLOWED and name != "--cb_type":
            return None
        if name == "--cb_type" and value not in _COST_TYPES:
            return None
        if name in ("--quadratic", "--interactions"):
            pairs.append(value)
        elif name == "--csoaa_ldf" and value != "multiline":
            return None
        else:
            options[name] = value
    options["interactions"] = " ".join(pairs)
    return options
