"""What a shown slot is worth, written once for the learner, the release and replay.

A slot's reward is made from the rewards stored for it (its decision's rows of ``rewards`` for
its item) by a ``SlotReward``: which figure of each row counts, how a slot's rows combine, and
what a slot that got none is worth. The learner teaches VW with it, the release's guard and
canary judge versions with it, and replay estimates it by default: all read the same rule, so
a version is judged on what it was taught to maximise.

``SLATEBANDIT_OBJECTIVE`` chooses that rule (``reward_rule``):

- ``clicks``: each row's ``reward`` (what the API was given, or ``SLATEBANDIT_REWARD_TABLE``'s
  value for its type), summed or the earliest (``SLATEBANDIT_REWARD_AGGREGATION``);
- ``revenue``: each row's ``reward`` plus its ``value`` (money; none counts 0) divided by a
  scale, summed: a click still teaches what the shopper likes, and a purchase adds its price.

Why a scale: a reward's unit is the score's unit, and the settings that turn scores into
exploration speak that unit (SquareCB's ``gamma`` multiplies score gaps, softmax's
``temperature`` divides them), as do the learning rate and ``SLATEBANDIT_DEFAULT_REWARD``: all
were chosen for click rewards of 0 or 1. Taught raw money, scores would lie tens apart where
they lay tenths apart, and SquareCB and softmax would all but stop exploring. Divided by the
catalog's median price, a typical purchase is worth about 1 and an expensive one a few, and the
ranking is still the ranking of money (every slot is divided by the same number). Measured on a
synthetic log (200 items, prices lognormal around a median of 51.5, VW's default adaptive,
normalised updates), VW's fit itself cared little: the model's top pick earned about the same
share of the best expected revenue taught raw money as taught money / median (0.58 and 0.54,
means of six runs of 40,000 examples, within their spread). ``SLATEBANDIT_REVENUE_SCALE`` sets
the scale instead; set it when figures from different days must share one unit (the median is
read as each process starts).

Why the click stays in: purchases are a few clicks in a hundred, and money alone taught the
model from those few. In the storefront simulator (purchases at prices, every placement, a
merchandiser's rules; 15,000 slates, the last 1,500 counted, two seeds;
``python -m benchmarks.merchandising --windows 30``), money alone earned 3.91 per slate against
5.27 for the clicks objective, at a CTR of 0.098 against 0.123. With the reward kept in, the
revenue objective earned 5.21 per slate against the clicks objective's 4.71 (a later,
deterministic run), at a CTR of 0.125 against 0.128.

Replay may estimate other figures than the objective (``METRICS``): ``clicks`` (1 if the slot
got a reward of type click), ``conversions`` (type purchase) and ``revenue`` (the sum of its
rewards' values, unscaled money). A slot has at most one reward of each type (``rewards``'
unique key), so summing the clicks of a slot gives 0 or 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, func, select
from sqlalchemy.sql import ColumnElement

from slatebandit.config import Settings
from slatebandit.logging.learning import slot_reward
from slatebandit.logging.schema import items, rewards

OBJECTIVES = ("clicks", "revenue")
METRICS = ("reward", "clicks", "conversions", "revenue")


@dataclass(frozen=True)
class SlotReward:
    """How a shown slot's reward is made from the rewards stored for it."""

    # of each row: reward, value (money), reward+value (the revenue objective's: the reward
    # plus the money over the scale), or a type (1 if of that type)
    figure: str = "reward"
    aggregation: str = "sum"  # of a slot's rows: sum, or the earliest
    default: float = 0.0  # a slot no reward came for
    scale: float = 1.0  # ``value`` is divided by it

    def column(self) -> ColumnElement[Any]:
        """Each stored reward's part in its slot's reward, as SQL over ``rewards``."""
        if self.figure == "reward":
            return rewards.c.reward
        if self.figure == "value":
            return func.coalesce(rewards.c.value, 0.0) / self.scale
        if self.figure == "reward+value":
            return rewards.c.reward + func.coalesce(rewards.c.value, 0.0) / self.scale
        return case((rewards.c.type == self.figure, 1.0), else_=0.0)

    def of(self, got: Sequence[float]) -> float:
        """A slot's reward from its rows' parts (``column``), in arrival order."""
        return slot_reward(got, self.aggregation, self.default)


LOGGED = SlotReward()  # each row's ``reward``, summed; 0 for a slot without one

_METRIC_RULES = {
    "clicks": SlotReward("click"),
    "conversions": SlotReward("purchase"),
    "revenue": SlotReward("value"),
}
_MEANINGS = {
    "clicks": "clicks per slot (CTR)",
    "conversions": "purchases per slot (conversion rate)",
    "revenue": "revenue per slot (the rewards' value, in money)",
}


def reward_rule(conn: Connection, settings: Settings, metric: str = "reward") -> SlotReward:
    """The rule for ``metric``; ``reward`` is the objective's (``SLATEBANDIT_OBJECTIVE``)."""
    if metric in _METRIC_RULES:
        return _METRIC_RULES[metric]
    if metric != "reward":
        raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}")
    if settings.objective == "revenue":
        scale = revenue_scale(conn, settings)
        return SlotReward("reward+value", "sum", settings.default_reward, scale)
    return SlotReward("reward", settings.reward_aggregation, settings.default_reward)


def meaning(metric: str, rule: SlotReward) -> str:
    """What an estimate of ``metric`` under ``rule`` is, in words, for reports."""
    if metric in _MEANINGS:
        return _MEANINGS[metric]
    if rule.figure == "reward+value":
        return (
            "reward per slot (objective revenue: the rewards' reward plus their value / "
            f"{rule.scale:g})"
        )
    return "reward per slot (objective clicks: the rewards' reward)"


def revenue_scale(conn: Connection, settings: Settings) -> float:
    """``SLATEBANDIT_REVENUE_SCALE``, or if it is 0 the median price of the available items
    that have one (1 when none has)."""
    if settings.revenue_scale > 0:
        return settings.revenue_scale
    priced = [items.c.deleted.is_(False), items.c.available.is_(True), items.c.price > 0]
    count = conn.execute(select(func.count()).where(*priced)).scalar_one()
    if not count:
        return 1.0
    # The middle one or two prices, sorted by the database: no million prices in Python.
    middle = conn.execute(
        select(items.c.price)
        .where(*priced)
        .order_by(items.c.price)
        .offset((count - 1) // 2)
        .limit(2 - count % 2)
    ).scalars()
    prices = list(middle)
    return float(sum(prices) / len(prices))
