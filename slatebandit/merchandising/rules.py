"""A merchandising rule: what a merchandiser asks of every slate it applies to.

Actions:
    pin      its ``items`` at its ``slots`` (the i-th item at the i-th slot), each logged with
             propensity 1 and kind ``pinned``
    boost    matching items' scores rise by ``weight`` before exploration
    bury     matching items' scores fall by ``weight`` before exploration
    promote  a ``share`` of the slate's slots is reserved for matching items, which the
             policy chooses among with its exploration (kind ``promoted``)
    block    matching items never reach the slate

A rule matches items by ``items`` (ids) and/or ``filter`` (the shape of a slate's
``filters``); an item matches if it is listed or passes the filter. It applies to its
``placements`` (default all), from ``start`` to ``end`` (unix seconds; either may be open).

A weight is a share of a slate's spread, its best candidate's score minus its worst
(``bandit.Shaping``): a boost of 1 lifts the worst candidate level with the best, whatever the
model's scale, and a small boost orders the equal scores of an untrained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slatebandit.retrieval import Filters

ACTIONS = ("pin", "boost", "bury", "promote", "block")
PLACEMENTS = ("home", "item", "cart", "category")


@dataclass(frozen=True)
class Rule:
    name: str
    version: int
    action: str
    items: tuple[str, ...] = ()
    filter: Filters | None = None
    placements: tuple[str, ...] = PLACEMENTS
    start: float | None = None
    end: float | None = None
    slots: tuple[int, ...] = ()  # pin
    weight: float = 0.0  # boost and bury
    share: float = 0.0  # promote

    @property
    def label(self) -> str:
        """How a decision's record names it: ``name@version``."""
        return f"{self.name}@{self.version}"

    def in_force(self, now: float) -> bool:
        return (self.start is None or self.start <= now) and (self.end is None or now < self.end)

    @property
    def shift(self) -> float:
        """What it adds to a matching item's score, in units of spread."""
        return {"boost": self.weight, "bury": -self.weight}.get(self.action, 0.0)

    @classmethod
    def from_body(cls, name: str, version: int, body: dict[str, Any]) -> Rule:
        """A rule from its stored body (validated when it was PUT: ``server.rules``)."""
        found = body.get("filter")
        return cls(
            name=name,
            version=version,
            action=body["action"],
            items=tuple(body.get("items", ())),
            filter=None if found is None else Filters.from_body(found),
            placements=tuple(body.get("placements") or PLACEMENTS),
            start=body.get("start"),
            end=body.get("end"),
            slots=tuple(body.get("slots", ())),
            weight=float(body.get("weight", 0.0)),
            share=float(body.get("share", 0.0)),
        )
