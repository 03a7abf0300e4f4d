"""Rotation (``merchandising.rotation``): what repeated impressions cost an item, how they
fade, and that an action resets them. Our own code, in memory: unit tests."""

from __future__ import annotations

import numpy as np
import pytest

from slatebandit.merchandising import Rotation

HOUR = 3600.0
KEYS = np.array([10, 11, 12, 13])


def test_each_impression_without_an_action_costs_a_share_of_the_spread() -> None:
    rotation = Rotation(rate=0.1, half_life=HOUR)
    assert rotation.shift("u", KEYS, {}, 0.0) is None  # never shown: nothing to shift
    for t in (0.0, 1.0, 2.0):
        rotation.shown("u", [10, 11] if t < 2 else [10], {}, t)
    shift = rotation.shift("u", KEYS, {}, 3.0)
    assert shift is not None
    assert shift.tolist() == pytest.approx([-(1 - 0.9**3), -(1 - 0.9**2), 0.0, 0.0])
    assert rotation.shift("someone else", KEYS, {}, 3.0) is None


def test_impressions_fade_by_half_per_half_life_in_steps() -> None:
    rotation = Rotation(rate=0.1, half_life=HOUR)
    rotation.shown("u", [10], {}, 0.0)
    rotation.shown("u", [10], {}, 1.0)
    two = -(1 - 0.9**2)
    # Within a step (225 s) nothing fades: slates do not depend on how fast requests come.
    assert rotation.shift("u", KEYS, {}, 1.0)[0] == rotation.shift("u", KEYS, {}, 200.0)[0]
    assert rotation.shift("u", KEYS, {}, 200.0)[0] == pytest.approx(two)
    assert rotation.shift("u", KEYS, {}, 1.0 + HOUR)[0] == pytest.approx(-(1 - 0.9**1))
    assert rotation.shift("u", KEYS, {}, 1.0 + 2 * HOUR)[0] == pytest.approx(-(1 - 0.9**0.5))


def test_acting_on_an_item_clears_its_impressions() -> None:
    rotation = Rotation(rate=0.1, half_life=HOUR)
    rotation.shown("u", [10, 11], {}, 0.0)
    clicked = {"click": {10: 5.0}}  # after the impression
    shift = rotation.shift("u", KEYS, clicked, 6.0)
    assert shift is not None and shift[0] == 0.0 and shift[1] < 0.0
    rotation.shown("u", [10], clicked, 7.0)  # shown again after the click: counts from one
    assert rotation.shift("u", KEYS, clicked, 8.0)[0] == pytest.approx(-0.1)


def test_rate_zero_turns_it_off_and_forget_erases_a_shopper() -> None:
    off = Rotation(rate=0.0, half_life=HOUR)
    off.shown("u", [10], {}, 0.0)
    assert off.shift("u", KEYS, {}, 1.0) is None
    on = Rotation(rate=0.1, half_life=HOUR)
    on.shown("u", [10], {}, 0.0)
    on.forget("u")
    assert on.shift("u", KEYS, {}, 1.0) is None


def test_it_remembers_the_items_last_shown_and_the_shoppers_last_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from slatebandit.merchandising import rotation as module

    monkeypatch.setattr(module, "USERS", 2)
    rotation = Rotation(rate=0.1, half_life=HOUR)
    rotation.shown("u", list(range(module.ITEMS)), {}, 0.0)
    rotation.shown("u", [0, 1000, 1001], {}, 1.0)  # 0 again, and two new: 1 and 2 drop out
    keys = np.array([0, 1, 2, 3, 1000, 1001])
    shift = rotation.shift("u", keys, {}, 2.0)
    assert shift is not None
    assert shift.tolist() == pytest.approx([-(1 - 0.9**2), 0.0, 0.0, -0.1, -0.1, -0.1])
    rotation.shown("v", [5], {}, 3.0)
    rotation.shown("w", [5], {}, 4.0)  # a third shopper: the least recently served goes
    assert rotation.shift("u", keys, {}, 5.0) is None
    assert rotation.shift("v", np.array([5]), {}, 5.0) is not None


def test_an_empty_slate_counts_nothing() -> None:
    rotation = Rotation(rate=0.1, half_life=HOUR)
    rotation.shown("u", [], {}, 0.0)  # every candidate filtered out: nothing was shown
    assert rotation.shift("u", KEYS, {}, 1.0) is None
    rotation.shown("u", [10], {}, 2.0)
    rotation.shown("u", [], {}, 3.0)
    assert rotation.shift("u", KEYS, {}, 4.0)[0] == pytest.approx(-0.1)
