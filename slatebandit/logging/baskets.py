"""Shoppers' add-to-cart and purchase actions, in id order, for the bought-together counts
(``retrieval.together``).

An action is recorded in one of two places: as an event (``POST /v1/events``), or as a reward
of that type on a slate (``POST /v1/rewards``), which is stored as a reward only; its shopper
is the one its decision was made for. Both are read here as one kind of row. Rewards of
erased shoppers are left out: their decisions all carry the same redacted user id, and would
read as one shopper who bought everything together.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Connection, Select, func, select

from slatebandit.logging.privacy import REDACTED
from slatebandit.logging.schema import decisions, events, rewards

BASKET_TYPES = ("add_to_cart", "purchase")
FEEDS = ("events", "rewards")  # the tables an action can be read from


class Action(NamedTuple):
    id: int  # the row's id in its own table
    user_id: str
    item_key: int
    created_at: float


def actions_after(conn: Connection, feed: str, after: int, limit: int) -> list[Action]:
    """Up to ``limit`` actions of ``feed`` with an id above ``after``, in id order."""
    return [Action(*row) for row in conn.execute(_actions(feed, after).limit(limit)).all()]


def newest_id(conn: Connection, feed: str) -> int:
    """The highest row id in ``feed`` (0 when it is empty), of any type."""
    table = events if feed == "events" else rewards
    return int(conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one())


def _actions(feed: str, after: int) -> Select:  # type: ignore[type-arg]
    if feed == "events":
        return (
            select(events.c.id, events.c.user_id, events.c.item_key, events.c.created_at)
            .where(events.c.id > after, events.c.type.in_(BASKET_TYPES))
            .order_by(events.c.id)
        )
    if feed == "rewards":
        return (
            select(rewards.c.id, decisions.c.user_id, rewards.c.item_key, rewards.c.created_at)
            .join(decisions, decisions.c.id == rewards.c.decision_id)
            .where(
                rewards.c.id > after,
                rewards.c.type.in_(BASKET_TYPES),
                rewards.c.reward > 0,  # a negative reward says the shopper did not want it
                decisions.c.user_id != REDACTED,
            )
            .order_by(rewards.c.id)
        )
    raise ValueError(f"unknown feed {feed!r}")
