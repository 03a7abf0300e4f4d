"""The rules in force on a serving worker, compiled so that a slate pays the same for 1 or 100.

``RuleBook.refresh`` (a background job, every ``SLATEBANDIT_CATALOG_POLL_SECONDS``) reads the
rule set when it changed and compiles, per placement, one array per effect over every item key
of the catalog: the summed shift of the boosts and buries, the blocked items, the promotable
ones, the pins. ``RuleBook.shape`` then reads a slate's candidates out of those arrays with
one gather each. A rule's start or end, a change of the catalog and a change of the rules all
recompile, on the job's thread.

What shaping does to a slate's candidates, in order:
    block    blocked candidates are dropped
    bring    pinned items and promoted ones retrieval did not propose are added (source ``rule``)
    pin      each pinned slot within the slate gets its item; a slot's first rule by name wins
    shift    boosts and buries shift the scores (``bandit.Shaping``)
    promote  ``round(share * k)`` slots (at least 1) are reserved for promotable candidates
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from sqlalchemy import Engine

from slatebandit.bandit import Shaping
from slatebandit.logging.rules import StoredRule, rule_set, rules_at
from slatebandit.merchandising.rules import PLACEMENTS, Rule
from slatebandit.retrieval import SOURCES, Candidates
from slatebandit.retrieval.catalog import Catalog

MAX_BROUGHT = 50  # items a placement's rules may bring: pinned ones, then promoted ones
PROMOTED_CHOICE = 10  # promotable candidates a slate should have to choose among
HEADROOM = 4096  # entries past the catalog's: items added before the next compile
RULE_SOURCE = "rule"  # the source of a candidate only a rule brought


@dataclass(frozen=True)
class Placed:
    """The rules in force at one placement, over every item key of one catalog version."""

    shift: np.ndarray | None  # float32 per key: boosts' weights minus buries'
    blocked: np.ndarray | None  # bool per key
    promotable: np.ndarray | None  # bool per key
    share: float  # of a slate's slots, reserved for promotable items (the promotions' sum)
    pins: tuple[tuple[int, int], ...]  # (slot, key), by slot
    pinned: np.ndarray  # int64 keys of the pins, brought in if retrieval missed them
    promoted: np.ndarray  # int64 keys promotions bring when the candidates hold too few

    @cached_property
    def pins_set(self) -> frozenset[int]:
        return frozenset(self.pinned.tolist())


class RuleBook:
    def __init__(self) -> None:
        self.rules: tuple[Rule, ...] = ()
        self.rule_set = 0  # the ``rule_versions`` id the rules were read at
        self._placed: dict[str, Placed] = {}
        self._compiled_for: tuple[int, int] = (-1, -1)  # (rule set, catalog version)
        self._next_change = math.inf  # when a rule starts or ends
        self._refreshing = threading.Lock()  # the job's thread and a PUT's may both refresh

    def load(self, stored: Sequence[StoredRule], rule_set: int) -> None:
        self.rules = tuple(Rule.from_body(s.name, s.version, s.body) for s in stored)
        self.rule_set = rule_set

    def refresh(self, engine: Engine, catalog: Catalog) -> None:
        """Read the rules if they changed, and compile them if the rules, the catalog or the
        time (a rule starting or ending) call for it."""
        with self._refreshing:
            with engine.connect() as conn:
                latest = rule_set(conn)
                if latest != self.rule_set:
                    self.load(rules_at(conn, latest), latest)
            now = time.time()
            stale = self._compiled_for != (self.rule_set, catalog.version)
            if stale or now >= self._next_change:
                self.compile(catalog, now)

    def compile(self, catalog: Catalog, now: float) -> None:
        in_force = [rule for rule in self.rules if rule.in_force(now)]
        placed: dict[str, Placed] = {}
        built: dict[tuple[str, ...], Placed] = {}  # placements with the same rules share
        for placement in PLACEMENTS:
            here = [rule for rule in in_force if placement in rule.placements]
            names = tuple(rule.label for rule in here)
            if not here:
                continue
            if names not in built:
                built[names] = _compile(here, catalog)
            placed[placement] = built[names]
        self._placed = placed  # one assignment: a slate reads the old or the new, never a mix
        self._compiled_for = (self.rule_set, catalog.version)
        edges = [t for rule in self.rules for t in (rule.start, rule.end) if t and t > now]
        self._next_change = min(edges, default=math.inf)

    def shape(
        self,
        catalog: Catalog,
        candidates: Candidates,
        placement: str,
        k: int,
        usable: Callable[[np.ndarray], np.ndarray],
    ) -> tuple[Candidates, Shaping | None]:
        """The candidates as the rules leave them, and what the slate builder must do; None
        when no rule is in force here. ``usable``: which of some keys the request may show
        (available, inside its filters, not excluded)."""
        placed = self._placed.get(placement)
        if placed is None:
            return candidates, None
        if placed.blocked is not None:
            candidates = _keep(candidates, ~_gather(placed.blocked, candidates.keys, False))
        candidates = _bring(candidates, placed, usable)
        keys = candidates.keys
        size = min(k, len(keys))
        pinned: dict[int, int] = {}
        for slot, key in placed.pins:
            found = np.flatnonzero(keys == key)
            if slot < size and len(found) and int(found[0]) not in pinned.values():
                pinned[slot] = int(found[0])
        promotable, promoted = None, 0
        if placed.promotable is not None:
            promotable = _gather(placed.promotable, keys, False)
            promotable[list(pinned.values())] = False
            promoted = min(max(1, round(placed.share * size)), int(promotable.sum()))
        shift = None if placed.shift is None else _gather(placed.shift, keys, 0.0)
        # What did nothing to this slate is not logged (a shift is 4 bytes a candidate).
        shift = shift if shift is not None and shift.any() else None
        promotable = promotable if promoted else None
        return candidates, Shaping(shift, pinned, promotable, promoted, self.rule_set)


def _compile(rules: list[Rule], catalog: Catalog) -> Placed:
    n = len(catalog.category)
    shift = np.zeros(n + HEADROOM, dtype=np.float32)
    blocked = np.zeros(n + HEADROOM, dtype=bool)
    promotable = np.zeros(n + HEADROOM, dtype=bool)
    share = 0.0
    pins: dict[int, int] = {}
    promoted_items: list[int] = []
    for rule in rules:
        if rule.action == "pin":
            for slot, item in zip(rule.slots, rule.items, strict=True):
                key = catalog.live_key(item)
                if key is not None and slot not in pins:
                    pins[slot] = key
            continue
        matches = _matches(rule, catalog, n + HEADROOM)
        if rule.action == "block":
            blocked |= matches
        elif rule.action == "promote":
            promotable |= matches
            share += rule.share
            promoted_items += [k for k in map(catalog.live_key, rule.items) if k is not None]
        else:
            shift[matches] += rule.shift
    # Promotions by filter bring their most popular matches, so a promoted slot has a choice
    # even when retrieval proposed none of them.
    popular = catalog.popular[catalog.popular < n]
    promoted_items += popular[promotable[popular]][:MAX_BROUGHT].tolist()
    pinned = list(dict.fromkeys(pins.values()))
    promoted = [key for key in dict.fromkeys(promoted_items) if key not in pinned][:MAX_BROUGHT]
    return Placed(
        shift=shift if shift.any() else None,
        blocked=blocked if blocked.any() else None,
        promotable=promotable if promotable.any() else None,
        share=min(share, 1.0),
        pins=tuple(sorted(pins.items())),
        pinned=np.asarray(pinned, dtype=np.int64),
        promoted=np.asarray(promoted, dtype=np.int64),
    )


def _matches(rule: Rule, catalog: Catalog, size: int) -> np.ndarray:
    """Which item keys a rule matches: listed, or passing its filter (``size`` entries: the
    catalog's and the headroom's, which match nothing)."""
    matches = np.zeros(size, dtype=bool)
    keys = [key for key in map(catalog.live_key, rule.items) if key is not None]
    matches[keys] = True
    if rule.filter is not None:
        found = rule.filter.mask(catalog)
        matches[: len(found)] |= found
    return matches


def _gather(values: np.ndarray, keys: np.ndarray, fill: object) -> np.ndarray:
    """``values[keys]``, with ``fill`` for keys newer than the compiled arrays (``HEADROOM``
    past the catalog makes that rare: only more new items than it between two compiles)."""
    if not len(keys) or int(keys.max()) < len(values):
        return values[keys]
    inside = keys < len(values)
    out = np.full(len(keys), fill, dtype=values.dtype)
    out[inside] = values[keys[inside]]
    return out


def _keep(candidates: Candidates, keep: np.ndarray) -> Candidates:
    if keep.all():
        return candidates
    return replace(
        candidates,
        keys=candidates.keys[keep],
        flags=candidates.flags[keep],
        sources=candidates.sources[keep],
    )


def _bring(
    candidates: Candidates, placed: Placed, usable: Callable[[np.ndarray], np.ndarray]
) -> Candidates:
    """The pinned items, and promoted ones until the candidates hold ``PROMOTED_CHOICE``
    promotable items, that the request may show and retrieval did not propose, appended
    (each brought item is one more for the model to score)."""
    room = 0
    if placed.promotable is not None:
        room = PROMOTED_CHOICE - int(_gather(placed.promotable, candidates.keys, False).sum())
    wanted = placed.pinned.tolist() + (placed.promoted.tolist() if room > 0 else [])
    if not wanted:
        return candidates
    present = set(candidates.keys.tolist())
    missing = np.asarray([key for key in wanted if key not in present], dtype=np.int64)
    if placed.blocked is not None and len(missing):
        missing = missing[~placed.blocked[missing]]  # brought keys are within the arrays
    missing = missing[usable(missing)] if len(missing) else missing
    pins = sum(1 for key in missing.tolist() if key in placed.pins_set)  # first, as wanted
    missing = missing[: pins + max(room, 0)]
    if not len(missing):
        return candidates
    return replace(
        candidates,
        keys=np.concatenate([candidates.keys, missing]),
        flags=np.concatenate([candidates.flags, np.zeros(len(missing), dtype=np.uint8)]),
        sources=np.concatenate(
            [candidates.sources, np.full(len(missing), SOURCES.index(RULE_SOURCE), np.uint8)]
        ),
    )
