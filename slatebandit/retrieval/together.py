"""Bought together: which items the same shoppers put in their carts or bought close in time.

The cart placement (``recommender.placements``) proposes, for the items in a cart, the items
most often carted or bought with them. The counts come from every add-to-cart and purchase
action, event or reward (``logging.baskets``). Each shopper has a basket: the distinct items
of their actions in the last ``WINDOW`` seconds. When an item enters a basket, it is counted
once with each item already there, both ways. An item already in the basket (carted, then
bought) counts nothing new, so a cart that is bought is not counted twice.

Every worker keeps its own counts and extends them from the database every catalog poll
(``refresh``, a background job), so an action posted to any worker reaches every worker's
lists within a poll; a starting worker reads the actions among the newest ``HISTORY`` rows of
each table. The slate path only reads the published lists (``of``): a dictionary lookup per
cart item, no SQL. A refresh runs on a worker thread while slates read: it replaces an item's
list with one assignment and never changes a published list in place, so a reader sees the
old list or the new one.

Memory is bounded: an item's counts are cut to its ``TOP`` strongest partners once they pass
twice that (a partner cut away starts again from one); the ``ITEMS`` most recently counted
items keep lists, and the baskets of the ``SHOPPERS`` most recently active shoppers are kept.
Counts do not decay: an item falls out when it has not been carted for a long while.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine

from slatebandit.logging.baskets import FEEDS, Action, actions_after, newest_id
from slatebandit.memory import Held, held

WINDOW = 86_400.0  # seconds: carted or bought this close together counts as bought together
TOP = 20  # partners kept per item
ITEMS = 50_000  # items with lists (the least recently counted go first)
SHOPPERS = 50_000  # shoppers whose baskets are kept (the least recently active go first)
BASKET = 20  # distinct items kept per basket (the oldest go first)
HISTORY = 50_000  # rows of each table (ids) a starting worker reads, the newest
REREAD = 256  # ids read again below the last one: PostgreSQL may commit ids out of order
BATCH = 5_000  # rows per read


@dataclass
class _Feed:
    """How far one table has been read: every action up to id ``after`` is counted, and
    ``seen`` holds the ids counted in the ``REREAD`` ids below it, which are read again in
    case a transaction that took a lower id committed late."""

    name: str
    after: int | None = None  # None: not read yet
    seen: set[int] = field(default_factory=set)

    def new_actions(self, conn: Connection) -> list[Action]:
        if self.after is None:
            self.after = max(0, newest_id(conn, self.name) - HISTORY)
        low, found = max(0, self.after - REREAD), []
        while True:
            rows = actions_after(conn, self.name, low, BATCH)
            found += [row for row in rows if row.id not in self.seen]
            self.seen.update(row.id for row in rows)
            if rows:
                low = rows[-1].id
            if len(rows) < BATCH:
                break
        self.after = max(self.after, low)
        self.seen = {i for i in self.seen if i > self.after - REREAD}
        return found


class Together:
    """Items bought together, counted from the shoppers' carts and purchases."""

    def __init__(self) -> None:
        # Published: item key -> (partner keys, their counts), strongest first. Read by slates.
        self._lists: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        # The refresh's own: the counts behind the lists, and each shopper's basket
        # (item key -> when it entered, the latest time).
        self._counts: OrderedDict[int, dict[int, int]] = OrderedDict()
        self._baskets: OrderedDict[str, dict[int, float]] = OrderedDict()
        self._feeds = tuple(_Feed(name) for name in FEEDS)

    def __len__(self) -> int:
        return len(self._lists)

    def memory(self) -> Held:
        """The published lists, and the counts and baskets behind them."""
        return Held.total([held(self._lists), held(self._counts), held(self._baskets)])

    def of(self, keys: Sequence[int], n: int) -> list[int]:
        """Up to ``n`` items bought together with any of ``keys`` (not ``keys`` themselves),
        by their counts summed over ``keys``, highest first (ties: the lower key)."""
        total: dict[int, int] = {}
        for key in keys:
            partners, counts = self._lists.get(key, ((), ()))
            for partner, count in zip(partners, counts, strict=True):
                total[partner] = total.get(partner, 0) + count
        for key in keys:
            total.pop(key, None)
        return sorted(total, key=lambda key: (-total[key], key))[:n]

    def refresh(self, engine: Engine) -> int:
        """Count the actions recorded since the last refresh (by any worker); returns how
        many. Runs on a worker thread, one refresh at a time."""
        with engine.connect() as conn:
            actions = [action for feed in self._feeds for action in feed.new_actions(conn)]
        actions.sort(key=lambda action: action.created_at)
        self.add(actions)
        return len(actions)

    def add(self, actions: Iterable[Action]) -> None:
        """Count ``actions`` (in time order) and publish the lists they changed."""
        changed: set[int] = set()
        for action in actions:
            changed.update(self._enter(action.user_id, action.item_key, action.created_at))
        for key in changed:
            self._publish(key)

    def _enter(self, user_id: str, key: int, at: float) -> list[int]:
        """Put ``key`` in the shopper's basket; returns the items whose counts changed."""
        basket = self._baskets.setdefault(user_id, {})
        self._baskets.move_to_end(user_id)  # the most recently active last
        if len(self._baskets) > SHOPPERS:
            self._baskets.popitem(last=False)
        for old in [old for old, when in basket.items() if when < at - WINDOW]:
            del basket[old]
        changed = []
        if key not in basket:
            for partner, when in basket.items():
                if abs(at - when) <= WINDOW:  # an action read late may be older than these
                    self._count(key, partner)
                    self._count(partner, key)
                    changed += [key, partner]
        basket[key] = max(at, basket.get(key, at))
        if len(basket) > BASKET:
            del basket[min(basket, key=basket.__getitem__)]
        return changed

    def _count(self, key: int, partner: int) -> None:
        counts = self._counts.setdefault(key, {})
        self._counts.move_to_end(key)  # the most recently counted last
        counts[partner] = counts.get(partner, 0) + 1
        if len(self._counts) > ITEMS:
            dropped, _ = self._counts.popitem(last=False)
            self._lists.pop(dropped, None)

    def _publish(self, key: int) -> None:
        counts = self._counts.get(key)
        if counts is None:  # dropped again since it changed
            return
        best = sorted(counts, key=lambda partner: (-counts[partner], partner))[:TOP]
        if len(counts) > 2 * TOP:
            self._counts[key] = {partner: counts[partner] for partner in best}
        self._lists[key] = (tuple(best), tuple(counts[partner] for partner in best))
