"""A/B experiments: arms, deterministic assignment, share changes that keep users in place.

Each experiment has a random salt. A user falls in bucket ``hash(salt, user_id) % BUCKETS``
(BLAKE2b, so every worker and every restart computes the same bucket) and the experiment's
``allocation`` says which arm owns each bucket. Shares are whole numbers of buckets.

Changing the shares (``reallocate``) takes buckets only from arms that shrink, the highest
numbered first, and gives only those to arms that grow: a user whose arm keeps or grows its
share stays in it. Arms whose shares add up to less than 1 leave the rest of the traffic to
the default policy, outside the experiment.

At most one experiment runs at a time, so every decision belongs to at most one.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slatebandit.errors import InvalidInput
from slatebandit.policies.specs import parse_spec
from slatebandit.stats import Outcomes, anytime_halfwidth, ratio_se

BUCKETS = 10_000  # shares are multiples of 0.01%
FREE = 255  # a bucket no arm owns: its users get the default policy
MAX_ARMS = 16
# Slates of both arms where the anytime interval is tightest (1.55 x the fixed one there); it
# is valid at every sample size, this only says where to spend its width.
ANYTIME_HORIZON = 10_000
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class Arm:
    name: str
    policy: str
    share: float

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "policy": self.policy, "share": self.share}


@dataclass(frozen=True)
class Experiment:
    name: str
    salt: str
    arms: tuple[Arm, ...]
    control: str
    allocation: bytes  # BUCKETS arm indices (FREE: nobody's)
    status: str = "running"
    created_at: float = 0.0
    updated_at: float = 0.0

    def arm_of(self, user_id: str) -> Arm | None:
        """The user's arm, or None if their bucket is outside every arm."""
        index = self.allocation[bucket(self.salt, user_id)]
        return None if index == FREE else self.arms[index]

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status,
            "control": self.control,
            "arms": [arm.to_dict() for arm in self.arms],
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def bucket(salt: str, user_id: str) -> int:
    digest = hashlib.blake2b(f"{salt}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def new_salt() -> str:
    return secrets.token_hex(8)


def check_name(name: str, field: str) -> str:
    if not (isinstance(name, str) and 0 < len(name) <= 64 and set(name) <= NAME_CHARS):
        raise InvalidInput(
            f"{field}: 1 to 64 letters, digits, '-', '_' or '.', got {name!r}", field=field
        )
    return name


def parse_arms(raw: object, control: object = None) -> tuple[tuple[Arm, ...], str]:
    """Arms and the control arm from a request body, validated (each error names its field)."""
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_ARMS:
        raise InvalidInput(f"arms: a list of 2 to {MAX_ARMS} arms", field="arms")
    arms = []
    for i, entry in enumerate(raw):
        field = f"arms[{i}]"
        if (
            not isinstance(entry, dict)
            or set(entry) - {"name", "policy", "share"}
            or not all(isinstance(key, str) for key in entry)
        ):
            raise InvalidInput(f"{field}: an object with name, policy and share", field=field)
        name = check_name(entry.get("name"), f"{field}.name")  # type: ignore[arg-type]
        policy = entry.get("policy")
        parse_spec(policy, f"{field}.policy")  # type: ignore[arg-type]
        share = entry.get("share")
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise InvalidInput(f"{field}.share: a number in (0, 1]", field=f"{field}.share")
        arms.append(Arm(name, str(policy).strip(), float(share)))
    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise InvalidInput("arms: arm names must be unique", field="arms")
    if sum(arm.share for arm in arms) > 1 + 1e-9:
        raise InvalidInput("arms: shares add up to more than 1", field="arms")
    if control is None:
        control = names[0]
    if control not in names:
        raise InvalidInput(f"control: {control!r} is not one of the arms {names}", field="control")
    return tuple(arms), str(control)


def targets(arms: Sequence[Arm]) -> np.ndarray:
    """Buckets per arm: each share rounded down, the rest to the largest remainders."""
    exact = np.asarray([arm.share for arm in arms]) * BUCKETS
    counts = np.floor(exact + 1e-9).astype(np.int64)
    total = min(int(round(sum(arm.share for arm in arms) * BUCKETS)), BUCKETS)
    for i in np.argsort(-(exact - counts), kind="stable")[: max(total - counts.sum(), 0)]:
        counts[i] += 1
    return counts


def reallocate(
    arms: Sequence[Arm], old_arms: Sequence[Arm] = (), old_allocation: bytes | None = None
) -> bytes:
    """The allocation for ``arms``, moving as few users as the new shares allow.

    Arms are matched to the old ones by name; a removed arm's buckets are freed.
    """
    allocation = np.full(BUCKETS, FREE, dtype=np.uint8)
    if old_allocation is not None:
        index = {arm.name: i for i, arm in enumerate(arms)}
        old = np.frombuffer(old_allocation, dtype=np.uint8)
        for i, arm in enumerate(old_arms):
            if arm.name in index:
                allocation[old == i] = index[arm.name]
    want = targets(arms)
    for i, count in enumerate(want):
        owned = np.flatnonzero(allocation == i)
        if len(owned) > count:  # shrink: give up the highest-numbered buckets
            allocation[owned[count:]] = FREE
    for i, count in enumerate(want):
        missing = int(count) - int(np.count_nonzero(allocation == i))
        if missing > 0:  # grow: take the lowest-numbered free buckets
            allocation[np.flatnonzero(allocation == FREE)[:missing]] = i
    return allocation.tobytes()


@dataclass(frozen=True)
class ArmResult:
    """One arm's click-through: clicks (shown items with a positive reward) per impression.

    The 95% interval treats the slate as the unit (clicks in one slate are not independent):
    the delta method for the ratio of per-slate sums.
    """

    name: str
    policy: str
    slates: int
    impressions: int
    clicks: int
    ctr: float
    se: float

    def interval(self, z: float = 1.959964) -> tuple[float, float]:
        return self.ctr - z * self.se, self.ctr + z * self.se


def arm_result(
    name: str,
    policy: str,
    slates: int,
    impressions: float,
    clicks: float,
    sum_nn: float,
    sum_cc: float,
    sum_nc: float,
) -> ArmResult:
    """From per-slate sums: impressions n, clicks c, and the sums of n², c², n·c."""
    if impressions <= 0:
        return ArmResult(name, policy, slates, 0, int(clicks), math.nan, math.nan)
    ctr = clicks / impressions
    se = ratio_se(slates, ctr, sum_nn, sum_cc, sum_nc, impressions)
    return ArmResult(name, policy, slates, int(impressions), int(clicks), ctr, se)


def report(
    experiment: Experiment,
    results: dict[str, ArmResult],
    outcomes: dict[str, Outcomes] | None = None,
) -> dict[str, object]:
    """Per arm: slates, impressions, clicks, CTR with its 95% interval, and the difference to
    the control arm with two 95% intervals (independent arms: the variances add).

    Here a click is a shown item with a positive reward, whatever its type. ``outcomes`` adds
    per arm what its slates led to by type (``stats.Outcomes``): CTR (rewards of type click per
    shown slot), conversion rate (purchases per shown slot) and revenue per slate, each with
    its 95% interval.

    Which to read: ``low``/``high`` (fixed-horizon) once, at a sample size chosen before the
    experiment started; ``anytime_low``/``anytime_high`` when the report is looked at every
    day or the experiment stops as soon as it is significant (a fixed interval watched that
    way will, sooner or later, show a difference that is not there)."""
    control = results.get(experiment.control)
    arms = []
    for arm in experiment.arms:
        r = results.get(arm.name) or ArmResult(arm.name, arm.policy, 0, 0, 0, math.nan, math.nan)
        low, high = r.interval()
        entry: dict[str, object] = {
            "arm": arm.name,
            "policy": arm.policy,
            "share": arm.share,
            "slates": r.slates,
            "impressions": r.impressions,
            "clicks": r.clicks,
            "ctr": _number(r.ctr),
            "ctr_low": _number(low),
            "ctr_high": _number(high),
        }
        if arm.name != experiment.control:
            entry["vs_control"] = _difference(r, control)
        if outcomes is not None:
            entry["outcomes"] = outcomes.get(arm.name, Outcomes()).to_dict()
        arms.append(entry)
    return {"experiment": experiment.name, "control": experiment.control, "arms": arms}


def _difference(arm: ArmResult, control: ArmResult | None) -> dict[str, object]:
    """The arm's CTR minus the control's, with both intervals on the same standard error.

    ``low``/``high``/``significant``: the fixed-horizon 95% interval, valid at one look.
    ``anytime_*``: the confidence sequence (``stats.anytime_halfwidth``, n = both arms'
    slates), valid at every look at once, so wider (about 1.55 times at ``ANYTIME_HORIZON``).
    """
    if control is None:
        return {
            "difference": None,
            "low": None,
            "high": None,
            "significant": False,
            "anytime_low": None,
            "anytime_high": None,
            "anytime_significant": False,
        }
    difference = arm.ctr - control.ctr
    se = math.sqrt(arm.se**2 + control.se**2)
    low, high = difference - 1.959964 * se, difference + 1.959964 * se
    lift = difference / control.ctr if control.ctr else math.nan
    significant = math.isfinite(se) and (low > 0 or high < 0)
    half = anytime_halfwidth(se, arm.slates + control.slates, t_opt=ANYTIME_HORIZON)
    anytime_low, anytime_high = difference - half, difference + half
    return {
        "difference": _number(difference),
        "low": _number(low),
        "high": _number(high),
        "lift": _number(lift),
        "significant": significant,
        "anytime_low": _number(anytime_low),
        "anytime_high": _number(anytime_high),
        "anytime_significant": math.isfinite(half) and (anytime_low > 0 or anytime_high < 0),
    }


def _number(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
