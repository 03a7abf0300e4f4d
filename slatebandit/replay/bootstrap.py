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

import math

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_MAX_COUNT = 12  # P(Poisson(1) > 12) < 1e-10
# u < _CDF[c] first at c = the count: the inverse CDF of Poisson(1).
_CDF = np.cumsum([math.exp(-1.0) / math.factorial(c) for c in range(_MAX_COUNT)])


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mixer (Steele et al. 2014); numpy's uint64 arithmetic wraps as it must."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return x ^ (x >> np.uint64(31))


BLOCK = 256  # replicates generated and multiplied at a time: bounds the temporaries


class Bootstrap:
    """Poisson(1) resampling weights for ``replicates`` bootstrap replicates.

    ``weights(ids)`` is a (len(ids), replicates) uint8 matrix of counts (never above
    ``_MAX_COUNT``); the last one computed is kept, because every estimator of every policy asks
    for the same chunk of decisions in turn. ``totals`` multiplies it into per-replicate sums a
    block of replicates at a time, so memory stays at one byte per (decision, replicate).
    """

    def __init__(self, replicates: int = 1000, seed: int = 0) -> None:
        if replicates < 0:
            raise ValueError(f"replicates must be >= 0, got {replicates}")
        self.replicates = replicates
        self.seed = seed
        self._key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
        self._last: tuple[bytes, np.ndarray] | None = None

    def weights(self, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        tag = ids.tobytes()
        if self._last is not None and self._last[0] == tag:
            return self._last[1]
        counts = np.zeros((len(ids), self.replicates), dtype=np.uint8)
        with np.errstate(over="ignore"):
            stream = _splitmix64(ids.astype(np.uint64) ^ self._key)[:, None]
            for start in range(0, self.replicates, BLOCK):
                stop = min(start + BLOCK, self.replicates)
                replicate = np.arange(start, stop, dtype=np.uint64)[None, :]
                bits = _splitmix64(stream * np.uint64(0x100000001B3) + replicate)
                uniform = (bits >> np.uint64(40)).astype(np.float64) * 2.0**-24
                counts[:, start:stop] = np.searchsorted(_CDF, uniform, side="right")
        self._last = (tag, counts)
        return counts

    def totals(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Per replicate, the count-weighted sums of ``values`` (one row per decision)."""
        counts = self.weights(ids)
        out = np.empty((self.replicates, values.shape[1]))
        for start in range(0, self.replicates, BLOCK):
            block = counts[:, start : start + BLOCK].astype(np.float64)
            out[start : start + BLOCK] = block.T @ values
        return out
