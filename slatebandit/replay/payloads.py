"""A chunk's decision payloads, decoded column by column (``Payloads``), and their logged
contexts, unpacked only when read (``Contexts``).

Each per-candidate field of every payload is joined into one buffer and laid into a padded
(D, C) array at once, instead of one ``DecisionPayload`` and a row copy per decision (a third
of a replay's time on a million decisions, measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slatebandit.logging.records import DecisionPayload, context_of


class Contexts(Sequence[dict[str, Any]]):
    """A chunk's logged contexts, each unpacked when it is read (``records.context_of``): only
    the targets that score read them."""

    def __init__(self, logged: list[bytes | dict[str, Any]]) -> None:
        self._logged = logged

    def __len__(self) -> int:
        return len(self._logged)

    def __getitem__(self, row: int) -> dict[str, Any]:  # type: ignore[override]
        return context_of(self._logged[row])


@dataclass(frozen=True)
class Payloads:
    """The decision payloads of a chunk, as per-decision and padded per-candidate arrays."""

    valid: np.ndarray  # (D, C)
    revs: np.ndarray  # (D, C) int64, 0 past a decision's candidates
    flags: np.ndarray  # (D, C) uint8
    dynamic: np.ndarray  # (D, C) uint8
    layout: np.ndarray  # (D, K) letters, "" past a decision's slots
    chosen: np.ndarray  # (D, K) int64
    explorations: list[dict[str, Any]]  # (D,) as logged
    contexts: Contexts
    specs: np.ndarray  # (D,)
    shift: np.ndarray  # (D, C) float64, 0 where a decision logged none
    marks: np.ndarray  # (D, C) uint8 rule marks, 0 where a decision logged none
    rules: np.ndarray  # (D,)

    @classmethod
    def decode(cls, blobs: list[bytes]) -> Payloads:
        raw = DecisionPayload.fields_many(blobs)
        counts = np.array([len(p["flg"]) for p in raw], dtype=np.int64)  # one byte each
        valid = np.arange(counts.max(initial=0))[None, :] < counts[:, None]
        depths = np.array([len(p["lay"]) for p in raw], dtype=np.int64)
        filled = np.arange(depths.max(initial=0))[None, :] < depths[:, None]
        return cls(
            valid=valid,
            revs=_padded(raw, "rev", "<u4", valid, np.int64),
            flags=_padded(raw, "flg", "u1", valid, np.uint8),
            dynamic=_padded(raw, "dyn", "u1", valid, np.uint8),
            layout=_padded_letters([p["lay"] for p in raw], filled),
            chosen=_padded(raw, "ch", "<u2", filled, np.int64),
            explorations=[p["exp"] for p in raw],
            contexts=Contexts([p["ctx"] for p in raw]),
            specs=np.array([p["fs"] for p in raw], dtype=np.int64),
            shift=_shifts(raw, valid),
            marks=_optional(raw, "rm", "u1", valid, np.uint8),
            rules=np.array([p.get("rs", 0) for p in raw], dtype=np.int64),
        )


def _padded(
    raw: list[dict[str, Any]], field: str, dtype: str, mask: np.ndarray, to: type
) -> np.ndarray:
    """Every payload's ``field`` bytes as a (D, width) array, zero past each one's length:
    a boolean mask fills row by row, in the order the joined buffer holds them."""
    out: np.ndarray = np.zeros(mask.shape, dtype=to)
    out[mask] = np.frombuffer(b"".join(p[field] for p in raw), dtype=dtype)
    return out


def _optional(
    raw: list[dict[str, Any]], field: str, dtype: str, valid: np.ndarray, to: type
) -> np.ndarray:
    """``_padded`` for a field only some payloads have (zero in the rows of the others)."""
    has = np.array([field in p for p in raw], dtype=bool)
    if not has.any():
        return np.zeros(valid.shape, dtype=to)
    return _padded([p for p in raw if field in p], field, dtype, valid & has[:, None], to)


def _shifts(raw: list[dict[str, Any]], valid: np.ndarray) -> np.ndarray:
    """Each payload's score shifts, logged dense or as (candidates moved, shifts)."""
    out = _optional(raw, "sh", "<f4", valid, np.float64)
    for row, fields in enumerate(raw):
        if "shi" in fields:
            moved = np.frombuffer(fields["shi"], dtype="<u2")
            out[row, moved] = np.frombuffer(fields["shv"], dtype="<f4")
    return out


def _padded_letters(layouts: list[str], mask: np.ndarray) -> np.ndarray:
    out = np.full(mask.shape, "", dtype="<U1")
    out[mask] = list("".join(layouts))
    return out
