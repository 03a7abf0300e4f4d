"""The Poisson bootstrap over decisions, reproducible and mergeable.

A bootstrap replicate resamples decisions with replacement. Drawing n decisions out of n gives
each one a Multinomial count; as n grows those counts become independent Poisson(1) draws
(Hanley & MacGibbon 2006; Chamandy et al. 2012), which is what makes the bootstrap streamable:
a decision's weight in replicate b depends on nothing but the decision, b and the seed.

We derive that weight from a hash of (seed, decision id, b) rather than from a random stream,
so the result does not depend on chunk sizes, on the order decisions arrive in, or on how many
processes shared the work: accumulators built on different shards add up to exactly the
accumulator of one pass.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from slatebandit.logging.partitions import sequence_numbers

_MAX_COUNT = 12  # P(Poisson(1) > 12) < 1e-10
# u < _CDF[c] first at c = the count: the inverse CDF of Poisson(1).
_CDF = np.cumsum([math.exp(-1.0) / math.factorial(c) for c in range(_MAX_COUNT)])
_UNIFORM_BITS = 24  # a count is drawn from the top 24 bits of its hash: u = bits * 2^-24


@functools.cache
def _count_table() -> np.ndarray:
    """The count for every 24-bit uniform: ``table[bits]`` is ``searchsorted(_CDF, bits *
    2^-24, "right")``, the inverse CDF above, looked up instead of searched (16 MB, built on
    first use).
    ``bits * 2^-24 >= _CDF[c]`` exactly when ``bits >= ceil(_CDF[c] * 2^24)``."""
    table = np.zeros(2**_UNIFORM_BITS, dtype=np.uint8)
    for threshold in np.ceil(_CDF * 2**_UNIFORM_BITS).astype(np.int64):
        table[min(int(threshold), len(table)) :] += 1
    return table


_COARSE_BITS = 12
_AMBIGUOUS = 255  # in the coarse table: look the full 24 bits up


@functools.cache
def _coarse_table() -> np.ndarray:
    """The count for each 12-bit prefix of a uniform, where every 24-bit value under that
    prefix has the same count, else ``_AMBIGUOUS`` (7 of the 4,096 prefixes straddle a step of
    the CDF). It fits in the L1 cache, where the 16 MB table does not: looking a block of
    draws up here first, and only the ambiguous ones (0.2%) in the full table, took 160 µs
    instead of 470 µs for 64 x 2,000 draws (measured)."""
    full = _count_table().reshape(2**_COARSE_BITS, -1)
    coarse = np.full(2**_COARSE_BITS, _AMBIGUOUS, dtype=np.uint8)
    settled = (full == full[:, :1]).all(axis=1)
    coarse[settled] = full[settled, 0]
    return coarse


def _lookup(bits: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = _count_table()[bits]`` (24-bit uniforms to counts), exactly, faster."""
    prefixes = bits >> np.uint64(_UNIFORM_BITS - _COARSE_BITS)
    np.take(_coarse_table(), prefixes.view(np.int64), out=out)
    ambiguous = out == _AMBIGUOUS
    if ambiguous.any():
        out[ambiguous] = _count_table()[bits[ambiguous]]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mixer (Steele et al. 2014), on a uint64 copy of ``x``."""
    return _splitmix64_in_place(np.array(x, dtype=np.uint64))


def _splitmix64_in_place(x: np.ndarray) -> np.ndarray:
    """``_splitmix64`` overwriting ``x`` (uint64, so products wrap as they must): the
    bootstrap mixes a (decisions x replicates) block at a time, and each temporary an
    expression would make is a pass over it."""
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


# Replicates hashed at a time: a (BLOCK x chunk) uint64 temporary. With a chunk of 2,000
# decisions, 64 replicates make 1 MB, which stays in cache through the mixer's passes; 256
# made 4 MB and took twice as long (25 against 14 ms for 2,000 x 1,000 counts, measured).
BLOCK = 64
DENSE = 4_000_000  # counts kept as float64 (32 MB) for the estimators that multiply them


class Bootstrap:
    """Poisson(1) resampling weights for ``replicates`` bootstrap replicates.

    ``weights(ids)`` is a (len(ids), replicates) uint8 matrix of counts (never above
    ``_MAX_COUNT``). It is held replicate-major (one contiguous row of decisions per
    replicate: the mixer writes whole rows, and ``totals`` multiplies rows), and the last one
    computed is kept, because every estimator of every policy asks for the same chunk of
    decisions in turn. ``totals`` multiplies it into per-replicate sums (from a float64 copy
    kept beside it for chunks up to ``DENSE`` counts, else a block of replicates at a time), so
    memory stays bounded by the chunk, not the log.
    """

    def __init__(self, replicates: int = 1000, seed: int = 0) -> None:
        if replicates < 0:
            raise ValueError(f"replicates must be >= 0, got {replicates}")
        self.replicates = replicates
        self.seed = seed
        self._key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        self._last: tuple[bytes, np.ndarray] | None = None  # (ids, counts: replicates x ids)
        self._dense: tuple[np.ndarray, np.ndarray] | None = None  # (counts, as float64)

    def forget(self) -> None:
        """Drop the kept counts (tens of MB): before a bootstrap is sent to another process."""
        self._last = self._dense = None

    def weights(self, ids: np.ndarray) -> np.ndarray:
        return self._counts(ids).T

    def _counts(self, ids: np.ndarray) -> np.ndarray:
        """The counts of ``ids``, replicate-major: ``counts[b, i]`` is decision ``ids[i]``'s
        count in replicate ``b``, from the top bits of splitmix64(hash(id) + b)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        tag = ids.tobytes()
        if self._last is not None and self._last[0] == tag:
            return self._last[1]
        counts = np.empty((self.replicates, len(ids)), dtype=np.uint8)
        with np.errstate(over="ignore"):
            stream = _splitmix64(sequence_numbers(ids).astype(np.uint64) ^ self._key)[None, :]
            stream *= np.uint64(0x100000001B3)
            for start in range(0, self.replicates, BLOCK):
                stop = min(start + BLOCK, self.replicates)
                replicates = np.arange(start, stop, dtype=np.uint64)[:, None]
                bits = _splitmix64_in_place(stream + replicates)
                bits >>= np.uint64(64 - _UNIFORM_BITS)
                _lookup(bits, counts[start:stop])
        self._last = (tag, counts)
        return counts

    def totals(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Per replicate, the count-weighted sums of ``values`` (one row per decision).

        The counts of the last ``ids`` are kept as float64 too (8 bytes per decision and
        replicate: 16 MB for a replay chunk of 2,000 decisions and 1,000 replicates), since
        every estimator of every target multiplies the same ones. Past ``DENSE`` counts, a
        block of replicates at a time is converted and multiplied instead."""
        counts = self._counts(ids)
        if counts.size <= DENSE:
            if self._dense is None or self._dense[0] is not counts:
                self._dense = (counts, counts.astype(np.float64))
            dense: np.ndarray = self._dense[1] @ values
            return dense
        out = np.empty((self.replicates, values.shape[1]))
        for start in range(0, self.replicates, BLOCK):
            out[start : start + BLOCK] = counts[start : start + BLOCK].astype(np.float64) @ values
        return out
