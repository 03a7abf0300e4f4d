"""VW learning examples from logged slots.

Each shown slot becomes one ``--cb_adf`` example: the shared features the scorer saw plus the
slot position (namespace ``p``, never interacted), and the shown item labelled
``0:cost:probability`` with cost = -reward and probability = the logged propensity. Only the
chosen action is included: MTR updates only the chosen action's regressor (importance weight
1/p), so the other candidates would cost time and teach nothing (DESIGN.md).
"""

from __future__ import annotations

from slatebandit.bandit.features import SharedFeatures, action_line


def slot_example(
    shared: SharedFeatures, slot: int, features: str, reward: float, propensity: float
) -> list[str]:
    if not 0 < propensity <= 1:
        raise ValueError(f"propensity must be in (0, 1], got {propensity}")
    return [shared.line(slot), f"0:{-reward:g}:{propensity:g} {action_line(features)}"]
