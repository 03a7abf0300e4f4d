"""Durable records in SQL: schema, engine setup, the group-commit writer and queries.

Always import this package by its full name, ``slatebandit.logging``: a top-level ``logging``
would shadow the standard library.
"""

from slatebandit.logging import experiments, machines, models
from slatebandit.logging.decisions import (
    DecisionRecord,
    ShownDecision,
    ShownSlot,
    decision_user,
    impression_counts,
    insert_event,
    insert_reward,
    shown_decision,
)
from slatebandit.logging.engine import open_engine
from slatebandit.logging.items import (
    changes_since,
    count_live_items,
    delete_item,
    latest_rev,
    load_items,
    upsert_items,
)
from slatebandit.logging.records import DecisionPayload
from slatebandit.logging.writer import GroupCommitWriter

__all__ = [
    "experiments",
    "machines",
    "DecisionPayload",
    "DecisionRecord",
    "GroupCommitWriter",
    "ShownDecision",
    "ShownSlot",
    "decision_user",
    "impression_counts",
    "insert_event",
    "insert_reward",
    "shown_decision",
    "changes_since",
    "count_live_items",
    "delete_item",
    "latest_rev",
    "load_items",
    "models",
    "open_engine",
    "upsert_items",
]
