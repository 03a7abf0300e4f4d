"""Online user state: recent items, purchases and a time-decayed session vector.

Each event updates the state before its 202 is sent, so the very next slate reflects it. The
state lives in a bounded in-process cache and is rebuilt from the ``events`` table on a miss.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 4.0}
SESSION_HALF_LIFE = 1800.0  # seconds: half an hour ago counts half as much
RECENT_ITEMS = 20


@dataclass(slots=True)  # up to 100k cached states: keep them small for the GC
class UserState:
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_ITEMS))
    purchased: set[int] = field(default_factory=set)
    session_vector: np.ndarray | None = None
    updated_at: float = 0.0

    def observe(self, key: int, kind: str, vector: np.ndarray | None, at: float) -> None:
        if key in self.recent:
            self.recent.remove(key)
        self.recent.append(key)
        if kind == "purchase":
            self.purchased.add(key)
        if vector is not None:
            weight = EVENT_WEIGHTS.get(kind, 1.0)
            if self.session_vector is None:
                self.session_vector = weight * vector
            else:
                decay = 0.5 ** (max(0.0, at - self.updated_at) / SESSION_HALF_LIFE)
                self.session_vector = decay * self.session_vector + weight * vector
        self.updated_at = max(self.updated_at, at)

    def recent_keys(self, n: int) -> list[int]:
        return list(self.recent)[-n:][::-1]  # most recent first


class UserStates:
    """A bounded LRU of user states; ``load`` rebuilds a state that is not cached."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._states: OrderedDict[str, UserState] = OrderedDict()

    def get(self, user_id: str) -> UserState | None:
        state = self._states.get(user_id)
        if state is not None:
            self._states.move_to_end(user_id)
        return state

    def put(self, user_id: str, state: UserState) -> UserState:
        self._states[user_id] = state
        self._states.move_to_end(user_id)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)
        return state

    @staticmethod
    def rebuild(
        events: Iterable[tuple[int, str, float]],
        vectors: Callable[[np.ndarray | list[int]], np.ndarray],
    ) -> UserState:
        """A state from ``(key, type, time)`` events, oldest first."""
        events = list(events)
        state = UserState()
        if not events:
            return state
        matrix = vectors([key for key, _, _ in events])
        for (key, kind, at), vector in zip(events, matrix, strict=True):
            state.observe(key, kind, vector, at)
        return state
