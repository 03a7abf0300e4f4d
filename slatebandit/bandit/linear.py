"""VW's ``--cb_adf`` predict, redone with numpy from VW's own hashes and weights.

A slate's scoring through VW writes about 200 lines of text, which VW then parses and hashes
token by token before its dot products. Every one of those tokens but the shopper's is the
same from slate to slate: an item's features change only with its catalog revision. So we
hash each token once, with VW's own hash (``hash_feature``, cached), and score with VW's
weights, read from the saved model once per version:

    score_j = -(w . x_j),  x_j = the shared features, candidate j's own (namespaces i and d),
                               the constant, and each pair (a, f) of an interaction "ui"
                               (a shared, f the item's) at index (hash(a) * FNV) ^ hash(f)

which is the index VW gives a quadratic feature (``interactions_predict.h``: the first
namespace's index times the FNV prime, xor the second's), within the weight mask. A test holds
these scores equal to VW's predict, to float precision, for the default arguments and the
other cost types; ``LinearScorer.build`` answers None for any argument it does not reproduce
(cubic or wildcard interactions, ignored namespaces, over 24 bits), and the scorer then keeps
VW's own text path.
"""

from __future__ import annotations

import array
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pylibvw
import vowpalwabbit

from slatebandit.bandit.features import BAND_TOKENS, SharedFeatures

FNV_PRIME = 16777619  # VW's multiplier of the first index of a quadratic feature
CONSTANT_HASH = 11650396  # VW's constant feature (``constant.h``)
SHARED, STATIC, BANDS = "uc", "i", "d"  # where each namespace of features.py lives
NAMESPACES = SHARED + STATIC + BANDS

# VW's options that change only how it learns or talks, not what a predict computes, and the
# options whose effect on a predict LinearScorer follows (hashing, interactions, the constant).
_LEARNING_ONLY = {
    "--cb_adf",
    "--csoaa_ldf",
    "--csoaa_rank",
    "--learning_rate",
    "--power_t",
    "--initial_t",
    "--decay_learning_rate",
    "--l1",
    "--l2",
    "--random_seed",
    "--adaptive",
    "--normalized",
    "--invariant",
    "--sgd",
    "--bit_precision",
    "--hash_seed",
    "--hash",
    "--noconstant",
    "--quadratic",
    "--interactions",
    "--no_stdin",
    "--initial_regressor",
    "--quiet",
}
_COST_TYPES = {"dm", "ips", "mtr"}  # each predicts with the same linear regressor


class TokenHashes:
    """VW's hash of each shared token and of each item's static features, remembered.

    A hash depends on the token, its namespace and VW's hashing options (seed, mode, and the
    bits it is masked to), not on the weights, so one table serves every model version of a
    process (``for_options``). It hashes with a small workspace of its own, so that no model
    outlives its version for the table's sake.
    """

    TOKENS = 300_000  # per namespace: contexts, categories, brands, item ids; cleared when full
    ITEMS = 200_000  # items' static features, about 200 bytes each; cleared when full

    def __init__(self, seed: int, mode: str, bits: int) -> None:
        self._workspace = vowpalwabbit.Workspace(
            f"--quiet --sgd -b {bits} --hash_seed {seed} --hash {mode}"
        )
        self._spaces = {ns: pylibvw.vw.hash_space(self._workspace, ns) for ns in NAMESPACES}
        self._tokens: dict[str, dict[str, int]] = {ns: {} for ns in NAMESPACES}
        self._items: dict[str, bytes] = {}
        self.bands = np.array(
            [[self.hash(BANDS, name) for name in tokens] for tokens in BAND_TOKENS],
            dtype=np.uint32,
        )  # (256, 2): the popularity and age band of each packed byte

    def hash(self, namespace: str, name: str) -> int:
        # A read of the workspace's hashing options, under the GIL like every pybind11 call.
        return int(pylibvw.vw.hash_feature(self._workspace, name, self._spaces[namespace]))

    def token(self, namespace: str, name: str) -> int:
        tokens = self._tokens[namespace]
        found = tokens.get(name)
        if found is None:
            if len(tokens) >= self.TOKENS:
                tokens.clear()
            found = tokens[name] = self.hash(namespace, name)
        return found

    def items(self, statics: Sequence[str]) -> list[bytes]:
        """The hashes of each item's static features (``Catalog.features``, all indicators
        of namespace i), as packed uint32 bytes."""
        cache = self._items
        try:
            return list(map(cache.__getitem__, statics))
        except KeyError:
            if len(cache) + len(statics) > self.ITEMS:
                cache.clear()
            for text in statics:
                if text not in cache:
                    hashes = [self.token(STATIC, name) for name in text.split()]
                    cache[text] = array.array("I", hashes).tobytes()
            return list(map(cache.__getitem__, statics))

    _tables: dict[tuple[int, str, int], TokenHashes] = {}

    @classmethod
    def for_options(cls, seed: int, mode: str, bits: int) -> TokenHashes:
        key = (seed, mode, bits)
        table = cls._tables.get(key)
        if table is None:
            table = cls._tables[key] = cls(seed, mode, bits)
        return table


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
    def build(cls, workspace: Any, model_bytes: bytes | None) -> LinearScorer | None:
        """The linear scorer of a VW workspace (loaded from ``model_bytes``, or fresh), or
        None if its arguments ask for something this module does not reproduce."""
        options = _options(str(workspace.get_arguments()).split())
        if options is None:
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
        self, shared: SharedFeatures, statics: Sequence[str], codes: np.ndarray
    ) -> np.ndarray:
        """Expected reward (VW's cost, negated) of each candidate: its static features
        ``statics`` (``Catalog.features``) and its packed band byte ``codes``."""
        n = len(statics)
        if n == 0:
            return np.zeros(0, dtype=np.float64)
        w, mask, hashes = self.weights, self.mask, self.hashes
        parts = hashes.items(statics)
        items = np.frombuffer(b"".join(parts), dtype=np.uint32) & np.uint32(mask)
        owner = np.repeat(np.arange(n), np.fromiter(map(len, parts), np.int64, n) >> 2)

        per_feature = w[items].astype(np.float64)
        total = self.constant
        for namespace, tokens in zip(SHARED, shared.namespaces(), strict=True):
            if not tokens:
                continue
            index, value = self._shared(namespace, tokens)
            total += float(value @ w[index & mask])
            if namespace in self.crossed:
                first = ((index * np.uint64(FNV_PRIME)) & np.uint64(mask)).astype(np.uint32)
                per_feature += value @ w[first[:, None] ^ items[None, :]]
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
        if name not in _LEARNING_ONLY and name != "--cb_type":
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


def read_weights(workspace: Any, model_bytes: bytes | None) -> np.ndarray | None:
    """Every weight of ``workspace`` as float32, by index; None if they cannot be read.

    VW has no bulk read of its weights: ``json_weights`` takes 0.2 s at 80,000 weights, and
    ``get_weight`` one at a time 0.5 s for a million, both holding the GIL. A saved model ends
    with its non-zero weights in index order, each a uint32 index and 1 to ``get_stride``
    floats (the weight, then with its learning state the adaptive and normalising sums). So
    the records are read back from the end of the model's bytes for as long as their indexes
    decrease; then checked against VW's own ``get_weight``; any disagreement answers None, and
    the scorer keeps VW's own predict. Takes about 10 ms at 65,000 weights.
    """
    size = pylibvw.vw.num_weights(workspace)
    if model_bytes is None:  # a fresh workspace: whatever it holds is in its JSON, and small
        weights = np.zeros(size, dtype=np.float32)
        for entry in json.loads(pylibvw.vw.json_weights(workspace))["weights"]:
            weights[entry["index"]] = entry["value"]
        return weights
    for floats in range(pylibvw.vw.get_stride(workspace), 0, -1):
        found = _tail_records(workspace, model_bytes, size, 1 + floats)
        if found is not None:
            return found
    return None


def _tail_records(workspace: Any, data: bytes, size: int, words: int) -> np.ndarray | None:
    """The weights, if the model ends with records of ``words`` 32-bit words each."""
    count = len(data) // (4 * words)
    records = np.frombuffer(data, np.uint32, count * words, len(data) - 4 * count * words)
    records = records.reshape(count, words)
    index, values = records[:, 0], records[:, 1].copy().view(np.float32)
    if count == 0 or index[-1] >= size:
        return None
    out_of_order = np.flatnonzero((index[:-1] >= index[1:]) | (index[:-1] >= size))
    start = int(out_of_order[-1]) + 1 if len(out_of_order) else 0
    index, values = index[start:], values[start:]

    def vw_weights(at: np.ndarray) -> np.ndarray:
        get = pylibvw.vw.get_weight
        return np.array([get(workspace, int(i), 0) for i in at], dtype=np.float32)

    # Where the records meet the header, the header's last bytes may read as records too:
    # keep only those of the first 64 that VW agrees with (one it agrees with is harmless).
    head = min(64, len(index))
    kept = np.concatenate(
        [np.flatnonzero(vw_weights(index[:head]) == values[:head]), np.arange(head, len(index))]
    )
    weights = np.zeros(size, dtype=np.float32)
    weights[index[kept]] = values[kept]
    # Then a seeded sample: of the records, and of all indexes (VW's zeros between them).
    rng = np.random.default_rng(len(data))
    probes = np.concatenate(
        [rng.choice(index, min(256, len(index)), replace=False), rng.integers(0, size, 256)]
    )
    return weights if np.array_equal(vw_weights(probes), weights[probes]) else None
