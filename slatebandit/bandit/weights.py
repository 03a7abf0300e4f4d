"""A VW model's weights as one numpy array, read from its saved bytes.

VW has no bulk read of its weights: ``json_weights`` takes 0.2 s at 80,000 weights, and
``get_weight`` one at a time 0.5 s for a million, both holding the GIL. A saved model ends
with its non-zero weights in index order, each a uint32 index and 1 to ``get_stride`` floats
(the weight, then with its learning state the adaptive and normalising sums). So the records
are read back from the end of the model's bytes for as long as their indexes decrease, then
checked against VW's own ``get_weight``; any disagreement answers None, and the scorer keeps
VW's own predict. 4 to 14 ms for a model of 1 to 4.5 MB (``benchmarks/scorer.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pylibvw


def read_weights(workspace: Any, model_bytes: bytes | None) -> np.ndarray | None:
    """Every weight of ``workspace`` (loaded from ``model_bytes``, or fresh) as float32, by
    index; None if they cannot be read (see the module)."""
    size = pylibvw.vw.num_weights(workspace)
    if model_bytes is None:  # a fresh workspace: VW starts every weight at 0 (the options
        return np.zeros(size, dtype=np.float32)  # that would not are refused before this)
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
