"""Online user state: recent items, what the user acted on, category and brand counters, a
time-decayed session vector and the last time they were seen.

Each event updates the state in the same transaction that stores the event, before its 202 is
sent (``logging.users.update_user_state``), so the very next slate reflects it on any worker:
a slate reads the user's row (one primary-key lookup) and decodes it only when its version
differs from the copy this worker cached.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from slatebandit.memory import Held, held

EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 4.0}
SESSION_HALF_LIFE = 1800.0  # seconds: half an hour ago counts half as much
# What fades over time fades in steps of 1/16 of its half-life (``stepped_fade``): with a
# continuous fade, the milliseconds between a shopper's events moved the session vector's
# floats, and with them near-tied neighbours, so a seeded run differed from run to run.
FADE_STEPS = 16
RECENT_ITEMS = 20
ACTED_ITEMS = 200  # per event type: the items a user acted on, for exclusion rules
COUNTERS = 30  # categories and brands counted per user (the smallest counts are dropped)
STATE_VERSION = 1


@dataclass(slots=True)  # up to 100k cached states: keep them small for the GC
class UserState:
    recent: list[tuple[int, float]] = field(default_factory=list)  # (key, time), newest last
    acted: dict[str, dict[int, float]] = field(default_factory=dict)  # type -> key -> last time
    categories: dict[str, float] = field(default_factory=dict)  # weighted event counts
    brands: dict[str, float] = field(default_factory=dict)
    session_vector: np.ndarray | None = None
    updated_at: float = 0.0  # last seen

    def observe(
        self,
        key: int,
        kind: str,
        vector: np.ndarray | None,
        at: float,
        category: str = "",
        brand: str = "",
        taste_half_life: float = 0.0,
    ) -> None:
        """Fold one action into the state. With ``taste_half_life`` H > 0, every earlier
        category and brand count first fades by 2^(-1/H): the counts describe the shopper's
        last H or so actions, so a shopper whose tastes change is profiled anew within a few
        H actions instead of carrying their first tastes for ever."""
        self.recent = [(k, t) for k, t in self.recent if k != key][-(RECENT_ITEMS - 1) :]
        self.recent.append((key, at))
        acted = self.acted.setdefault(kind, {})
        acted.pop(key, None)
        acted[key] = at
        while len(acted) > ACTED_ITEMS:
            del acted[next(iter(acted))]
        weight = EVENT_WEIGHTS.get(kind, 1.0)
        fade = 0.5 ** (1.0 / taste_half_life) if taste_half_life > 0 else 1.0
        for counters, name in ((self.categories, category), (self.brands, brand)):
            if fade < 1.0:
                for other in counters:
                    counters[other] *= fade
            if name:
                counters[name] = counters.get(name, 0.0) + weight
                if len(counters) > COUNTERS:
                    del counters[min(counters, key=counters.__getitem__)]
        if vector is not None:
            # A vector from another embedding space (an older index) starts over.
            if self.session_vector is None or self.session_vector.shape != vector.shape:
                self.session_vector = (weight * vector).astype(np.float32)
            else:
                decay = session_decay(at - self.updated_at)
                self.session_vector = (decay * self.session_vector + weight * vector).astype(
                    np.float32
                )
        self.updated_at = max(self.updated_at, at)

    def recent_keys(self, n: int) -> list[int]:
        return [key for key, _ in self.recent[-n:]][::-1]  # most recent first

    def excluded(self, rules: Mapping[str, float | None], now: float) -> set[int]:
        """Items to keep out of slates: acted on with a type in ``rules`` (type -> window in
        seconds, None for ever) within that window."""
        out: set[int] = set()
        for kind, window in rules.items():
            for key, at in self.acted.get(kind, {}).items():
                if window is None or now - at <= window:
                    out.add(key)
        return out

    def top(self, counters: str, n: int) -> list[str]:
        values: dict[str, float] = getattr(self, counters)
        return sorted(values, key=lambda name: (-values[name], name))[:n]

    def shares(self, counters: str, n: int) -> list[tuple[str, float]]:
        """The ``n`` largest counters, each as its share of all the user's counted events."""
        values: dict[str, float] = getattr(self, counters)
        total = sum(values.values())
        return [(name, values[name] / total) for name in self.top(counters, n)] if total else []

    def to_bytes(self) -> bytes:
        return msgpack.packb(
            {
                "v": STATE_VERSION,
                "r": self.recent,
                "a": {kind: list(acted.items()) for kind, acted in self.acted.items()},
                "c": self.categories,
                "b": self.brands,
                "s": None if self.session_vector is None else self.session_vector.tobytes(),
                "t": self.updated_at,
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> UserState:
        raw: dict[str, Any] = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if raw.get("v") != STATE_VERSION:
            return cls()  # a state this version cannot read starts over
        vector = raw["s"]
        return cls(
            recent=[(int(k), float(t)) for k, t in raw["r"]],
            acted={kind: {int(k): float(t) for k, t in pairs} for kind, pairs in raw["a"].items()},
            categories=dict(raw["c"]),
            brands=dict(raw["b"]),
            session_vector=None if vector is None else np.frombuffer(vector, dtype=np.float32),
            updated_at=float(raw["t"]),
        )


# A decoded state takes 5 to 8 times its stored bytes (dicts of boxed ints and floats where
# msgpack has packed numbers): 2.2 KB for 3 views, 87 KB for a shopper with ACTED_ITEMS of
# each event type (``slatebandit.memory.deep_bytes``). Counted at 8, so the estimate leans high.
DECODED_PER_STORED = 8
STATES_BYTES = 256 * 2**20  # what a worker's decoded states may take, about


class UserStates:
    """A bounded LRU of decoded states, each with the row version it was decoded from.

    Bounded by count and by bytes (each state's stored size times ``DECODED_PER_STORED``): by
    count alone, 100,000 shoppers with long histories would take 8.7 GB a worker. What leaves
    is decoded again from the row a slate reads anyway (tens of microseconds)."""

    def __init__(self, capacity: int = 100_000, budget: int = STATES_BYTES) -> None:
        self.capacity = capacity
        self.budget = budget
        # user -> (row version, decoded state, its estimated bytes)
        self._states: OrderedDict[str, tuple[int, UserState, int]] = OrderedDict()
        self.size = 0  # the states' estimated bytes

    def get(self, user_id: str, version: int) -> UserState | None:
        found = self._states.get(user_id)
        if found is None or found[0] != version:
            return None
        self._states.move_to_end(user_id)
        return found[1]

    def latest(self, user_id: str) -> UserState | None:
        """The newest state decoded for ``user_id``, whatever its version (used while the
        database cannot be asked which version is current)."""
        found = self._states.get(user_id)
        return None if found is None else found[1]

    def drop(self, user_id: str) -> None:
        found = self._states.pop(user_id, None)
        if found is not None:
            self.size -= found[2]

    def memory(self) -> Held:
        return held(self._states)

    def put(self, user_id: str, version: int, state: UserState, stored: int) -> UserState:
        """Keep ``state`` (decoded from ``stored`` bytes), dropping the least recently used
        past the count or the byte budget."""
        self.drop(user_id)
        self._states[user_id] = (version, state, stored * DECODED_PER_STORED)
        self.size += stored * DECODED_PER_STORED
        while len(self._states) > self.capacity or (self.size > self.budget and self._states):
            _, (_, _, size) = self._states.popitem(last=False)
            self.size -= size
        return state


def session_decay(elapsed: float) -> float:
    """What the session vector keeps after ``elapsed`` seconds."""
    return stepped_fade(elapsed, SESSION_HALF_LIFE)


def stepped_fade(elapsed: float, half_life: float) -> float:
    """What is left after ``elapsed`` seconds (none: all of it) of something halving every
    ``half_life``, in steps of 1/``FADE_STEPS`` of it: two moments a few milliseconds apart
    fade alike, so a seeded run gives the same slates however fast the machine answers."""
    steps = math.floor(max(0.0, elapsed) * FADE_STEPS / half_life)  # math: a tenth of numpy's
    return 0.5 ** (steps / FADE_STEPS)  # cost on one float, and the same value
