"""Rotation: an item shown to a shopper again and again without a click loses score.

Each impression since the shopper last acted on an item (clicked, viewed, carted or bought it)
counts, fading by half every ``half_life`` seconds (in steps of a sixteenth of it); ``n`` such
impressions shift the item's score by ``-(1 - (1 - rate) ** n)`` in units of the slate's spread
(``bandit.Shaping``): with the default rate 0.1, one fresh impression costs a tenth of the
spread, five cost 41%. The
shift goes into the scores before exploration and is logged with the decision, so propensities
stay exact and replay applies the same shift to any target.

Impressions are remembered by the worker that served them, in memory (the most recent
``USERS`` shoppers, ``ITEMS`` items each): with several workers, each sees the slates it
served, so rotation is gentler than configured unless a shopper's requests stay on one worker.
Actions are read from the shopper's stored state, shared by every worker.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from slatebandit.memory import Held, held
from slatebandit.retrieval.user_state import stepped_fade

Acted = Mapping[str, Mapping[int, float]]  # action type -> item key -> its last time
USERS = 10_000  # shoppers whose impressions a worker remembers (about 1 KB each at most)
ITEMS = 40  # items remembered per shopper, the most recently shown
KEY, COUNT, AT = 0, 1, 2  # the columns of a shopper's impressions


class Rotation:
    def __init__(self, rate: float, half_life: float) -> None:
        self.rate = rate
        self.half_life = half_life
        # shopper -> one row per item, the most recently shown last: its key, its impressions
        # faded to ``at``, and ``at`` (the latest impression). An array, not a dict of tuples:
        # those took 7 KB a shopper (34 MB for the soak's 5,000), and a worker's memory grew
        # for twenty minutes as they filled; an array takes 1 KB. Never changed in place, so
        # ``shift`` reads it without the lock.
        self._seen: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def shift(self, user_id: str, keys: np.ndarray, acted: Acted, now: float) -> np.ndarray | None:
        """Each candidate's shift for ``user_id`` (None if none is shifted); ``acted``: when
        the shopper last did each kind of action on each item (``UserState.acted``)."""
        seen = self._seen.get(user_id)
        if seen is None or not self.enabled:
            return None
        rows = seen.tolist()
        row_of = {int(row[KEY]): row for row in rows}  # a dict: faster than numpy at this size
        shift = np.zeros(len(keys), dtype=np.float32)
        for i, key in enumerate(keys.tolist()):
            row = row_of.get(key)
            if row is not None and _last_action(acted, key) < row[AT]:
                faded = row[COUNT] * self._fading(now - row[AT])
                shift[i] = -(1.0 - (1.0 - self.rate) ** faded)
        return shift if shift.any() else None

    def shown(self, user_id: str, keys: list[int], acted: Acted, now: float) -> None:
        """Count one impression of each of ``keys``; an item acted on since its last
        impression starts again from none."""
        if not self.enabled or not keys:  # an empty slate shows nothing to count
            return
        shown = np.empty((len(keys), 3))
        shown[:, KEY], shown[:, COUNT], shown[:, AT] = keys, 1.0, now
        with self._lock:
            seen = self._seen.pop(user_id, None)
            if seen is not None:
                same = shown[:, KEY, None] == seen[:, KEY]  # a few keys against at most ITEMS
                rows, earlier = np.nonzero(same)
                for row, (_, count, at) in zip(rows.tolist(), seen[earlier].tolist(), strict=True):
                    if _last_action(acted, keys[row]) < at:
                        shown[row, COUNT] = count * self._fading(now - at) + 1.0
                # The items not shown this time stay, in their order.
                shown = np.concatenate((seen[~same.any(axis=0)], shown))
            self._seen[user_id] = shown[-ITEMS:].copy() if len(shown) > ITEMS else shown
            while len(self._seen) > USERS:
                self._seen.popitem(last=False)

    def _fading(self, elapsed: float) -> float:
        """What an impression ``elapsed`` seconds old still counts: half per half-life, in
        steps (225 s at the default), so that a seeded run makes the same slates."""
        return stepped_fade(elapsed, self.half_life)

    def memory(self) -> Held:
        return held(self._seen)

    def forget(self, user_id: str) -> None:
        """An erased shopper's impressions go with them."""
        with self._lock:
            self._seen.pop(user_id, None)


def _last_action(acted: Acted, key: int) -> float:
    last = -math.inf  # a loop, not max() over a generator: it runs for every remembered item
    for times in acted.values():
        at = times.get(key, last)
        if at > last:
            last = at
    return last
