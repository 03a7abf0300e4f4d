"""A Personalizer event: the context and actions the caller sent, and for each slot the pick,
its exact probability and the baseline; logged as msgpack, replayed by learning and
evaluation.

A single-slot Rank is an event with one slot (id None). In a multi-slot event slot j picks from
the actions not excluded for it and not picked by slots 0..j-1, so its logged probability is
conditional on the slots before it, as in the slate builder (``bandit.slate``).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack
import numpy as np

from slatebandit.bandit.exploration import epsilon_greedy

FORMAT = 1


@dataclass(frozen=True)
class Slot:
    id: str | None  # None for a single-slot Rank
    features: str  # VW text of the slot's features ("" for none)
    excluded: tuple[int, ...]  # action indices this slot may not pick
    baseline: int  # the action the caller would have shown
    chosen: int
    propensity: float


@dataclass(frozen=True)
class Event:
    context: str  # VW text of the context features
    action_ids: tuple[str, ...]
    action_features: tuple[str, ...]  # VW text, one per action
    slots: tuple[Slot, ...]
    exploration: float  # the epsilon the pmfs were drawn with
    mode: str  # the loop's learning mode when it ranked

    def shared_line(self, slot: int) -> str:
        """VW's shared line for ``slot``: the context and the slot's features."""
        return " ".join(("shared |", self.context, self.slots[slot].features)).rstrip()

    def allowed(self, slot: int) -> np.ndarray:
        """Which actions ``slot`` could pick: not excluded for it, not picked before it."""
        mask = np.ones(len(self.action_ids), dtype=bool)
        mask[list(self.slots[slot].excluded)] = False
        mask[[s.chosen for s in self.slots[:slot]]] = False
        return mask

    def action_line(self, index: int) -> str:
        return self.action_features[index] or "|"

    def example(self, slot: int, reward: float, every_action: bool) -> list[str]:
        """One VW learning example for ``slot``: cost = -reward at the logged probability.

        ``every_action``: include the slot's other allowed actions (cb types ips and dr need
        them; mtr learns from the chosen one alone)."""
        pick = self.slots[slot]
        label = f"0:{-reward:g}:{pick.propensity:g} "
        lines = [self.shared_line(slot), label + self.action_line(pick.chosen)]
        if every_action:
            others = np.flatnonzero(self.allowed(slot))
            lines.extend(self.action_line(int(i)) for i in others if i != pick.chosen)
        return lines

    def to_bytes(self) -> bytes:
        return msgpack.packb(
            {
                "v": FORMAT,
                "ctx": self.context,
                "ids": list(self.action_ids),
                "f": list(self.action_features),
                "slots": [
                    [s.id, s.features, list(s.excluded), s.baseline, s.chosen, s.propensity]
                    for s in self.slots
                ],
                "eps": self.exploration,
                "mode": self.mode,
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Event:
        raw = msgpack.unpackb(data, raw=False)
        slots = tuple(
            Slot(sid, features, tuple(excluded), baseline, chosen, propensity)
            for sid, features, excluded, baseline, chosen, propensity in raw["slots"]
        )
        return cls(raw["ctx"], tuple(raw["ids"]), tuple(raw["f"]), slots, raw["eps"], raw["mode"])


def slot_pmf(
    scores: np.ndarray, allowed: np.ndarray, baseline: int, mode: str, exploration: float
) -> np.ndarray:
    """The slot's pmf over every action (zero where not allowed).

    Online: epsilon-greedy over the allowed actions by score (ties to the first, so an
    untrained model shows the caller's order). Apprentice and LoggingOnly: the baseline, or the
    first allowed action when an earlier slot took it."""
    pmf = np.zeros(len(allowed))
    indices = np.flatnonzero(allowed)
    if mode == "Online":
        pmf[indices] = epsilon_greedy(scores[indices], exploration)
    else:
        pmf[baseline if allowed[baseline] else indices[0]] = 1.0
    return pmf
