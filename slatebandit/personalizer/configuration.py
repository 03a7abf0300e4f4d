"""A loop's service and policy configuration, as Personalizer's ``configurations`` routes speak
them, validated field by field.

Durations arrive as ISO 8601 (``PT10M``, ``P1DT2H``) or as .NET's ``[d.]hh:mm:ss``; both are
stored as seconds and answered in ISO 8601. Policy arguments are VW command lines as
Personalizer wrote them (``--cb_explore_adf --epsilon 0.2 -q ::``), checked by
``personalizer.arguments``.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from slatebandit.errors import InvalidInput
from slatebandit.personalizer.arguments import scorer_arguments

LEARNING_MODES = ("Online", "Apprentice", "LoggingOnly")
AGGREGATIONS = ("earliest", "sum", "average")
DEFAULT_POLICY_NAME = "default"
# Personalizer's default learning policy, less its exploration (see the module doc).
DEFAULT_ARGUMENTS = "--cb_explore_adf --epsilon 0.2 --power_t 0 -l 0.001 --cb_type mtr -q ::"
MAX_DURATION = 3650 * 86400.0  # ten years: any longer wait or period is a mistake
LATEST_TIME = datetime(9000, 1, 1, tzinfo=UTC).timestamp()
# Fields we compute and answer; a PUT that sends them back (a GET's body) does not store them.
_ANSWERED = ("learningMode", "lastConfigurationEditDate", "latestApprenticeModeMetrics")
_ISO = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_CLOCK = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")


def parse_duration(value: Any, field: str) -> float:
    """Seconds from ``PT10M`` / ``P1DT2H30M`` / ``00:10:00`` / ``1.02:00:00``."""
    text = value.strip() if isinstance(value, str) else ""
    match = (_ISO if text.startswith("P") else _CLOCK).match(text)
    if not match or text in ("P", "PT") or text.endswith("T"):
        raise InvalidInput(
            f"{field}: {value!r} is not a duration (ISO 8601 such as PT10M, or hh:mm:ss)",
            field=field,
        )
    parts = {k: float(v) for k, v in match.groupdict().items() if v}
    if text[0] != "P" and (parts.get("m", 0) >= 60 or parts.get("s", 0) >= 60):
        raise InvalidInput(f"{field}: {value!r}: minutes and seconds must be below 60", field=field)
    seconds = (
        parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60
    ) + parts.get("s", 0)
    if not seconds <= MAX_DURATION:
        raise InvalidInput(f"{field}: must be at most {MAX_DURATION // 86400:g} days", field=field)
    return seconds


def format_duration(seconds: float) -> str:
    """ISO 8601: 600 -> ``PT10M``, 90061 -> ``P1DT1H1M1S``."""
    days, rest = divmod(round(seconds, 3), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time_part = "".join(
        f"{v:g}{unit}" for v, unit in ((hours, "H"), (minutes, "M"), (secs, "S")) if v
    )
    out = "P" + (f"{days:g}D" if days else "")
    return out + ("T" + time_part if time_part else "" if days else "T0S")


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: Any, field: str) -> float:
    """Seconds since the epoch from an ISO 8601 date-time (``2026-11-01T00:00:00Z``)."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            at = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            pass
        else:
            if 0 <= at <= LATEST_TIME:
                return at
            raise InvalidInput(f"{field}: must be between 1970 and 9000", field=field)
    raise InvalidInput(f"{field}: {value!r} is not an ISO 8601 date-time", field=field)


@dataclass(frozen=True)
class ServiceConfiguration:
    reward_wait_seconds: float = 600.0
    default_reward: float = 0.0
    reward_aggregation: str = "earliest"
    exploration: float = 0.2
    model_export_seconds: float = 300.0
    log_retention_days: int = -1  # -1: keep the log forever
    learning_mode: str = "Online"
    edited_at: float = 0.0
    # Accepted and echoed, with no effect here (there is no Azure storage to mirror to).
    extras: tuple[tuple[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        body = {
            "rewardWaitTime": format_duration(self.reward_wait_seconds),
            "defaultReward": self.default_reward,
            "rewardAggregation": self.reward_aggregation,
            "explorationPercentage": self.exploration,
            "modelExportFrequency": format_duration(self.model_export_seconds),
            "logRetentionDays": self.log_retention_days,
            "learningMode": self.learning_mode,
            "lastConfigurationEditDate": iso_time(self.edited_at or time.time()),
        }
        return {**dict(self.extras), **body}

    def to_store(self) -> dict[str, Any]:
        stored = asdict(self)
        stored["extras"] = dict(self.extras)
        return stored

    @classmethod
    def from_store(cls, stored: dict[str, Any]) -> ServiceConfiguration:
        known = {k: v for k, v in stored.items() if k in cls.__dataclass_fields__}
        known["extras"] = tuple(sorted(dict(known.get("extras", {})).items()))
        return cls(**known)

    @classmethod
    def from_json(cls, body: Any) -> ServiceConfiguration:
        """A full configuration, as ``PUT configurations/service`` sends it."""
        if not isinstance(body, dict):
            raise InvalidInput("body: must be a JSON object", field="body")
        required = (
            "rewardWaitTime",
            "defaultReward",
            "rewardAggregation",
            "explorationPercentage",
            "modelExportFrequency",
            "logRetentionDays",
        )
        for name in required:
            if body.get(name) is None:
                raise InvalidInput(f"{name}: is required", field=name)
        exploration = _number(body["explorationPercentage"], "explorationPercentage", 0.0, 1.0)
        aggregation = body["rewardAggregation"]
        if not isinstance(aggregation, str) or aggregation.lower() not in AGGREGATIONS:
            raise InvalidInput(
                "rewardAggregation: must be earliest, sum or average", field="rewardAggregation"
            )
        retention = body["logRetentionDays"]
        if (
            isinstance(retention, bool)
            or not isinstance(retention, int)
            or (retention < 1 and retention != -1)
            or retention > 2**31 - 1
        ):
            raise InvalidInput(
                "logRetentionDays: must be a whole number of days >= 1, or -1 to keep forever",
                field="logRetentionDays",
            )
        mode = body.get("learningMode") or "Online"
        modes = {m.lower(): m for m in LEARNING_MODES}
        if not isinstance(mode, str) or mode.lower() not in modes:
            raise InvalidInput(
                f"learningMode: must be one of {', '.join(LEARNING_MODES)}", field="learningMode"
            )
        wait = parse_duration(body["rewardWaitTime"], "rewardWaitTime")
        if wait > 2 * 86400:
            raise InvalidInput("rewardWaitTime: must be at most 2 days", field="rewardWaitTime")
        export = parse_duration(body["modelExportFrequency"], "modelExportFrequency")
        if export < 1:
            raise InvalidInput(
                "modelExportFrequency: must be at least 1 second", field="modelExportFrequency"
            )
        extras = {k: v for k, v in body.items() if k not in required and k not in _ANSWERED}
        return cls(
            reward_wait_seconds=wait,
            default_reward=_number(body["defaultReward"], "defaultReward", -1.0, 1.0),
            reward_aggregation=aggregation.lower(),
            exploration=exploration,
            model_export_seconds=export,
            log_retention_days=retention,
            learning_mode=modes[mode.lower()],
            edited_at=time.time(),
            extras=tuple(sorted(extras.items())),
        )

    def edited(self) -> ServiceConfiguration:
        return replace(self, edited_at=time.time())


@dataclass(frozen=True)
class PolicyConfiguration:
    name: str = DEFAULT_POLICY_NAME
    arguments: str = DEFAULT_ARGUMENTS

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "arguments": self.arguments}

    @property
    def vw_args(self) -> str:
        return scorer_arguments(self.arguments, "arguments")

    @classmethod
    def from_json(cls, body: Any) -> PolicyConfiguration:
        if not isinstance(body, dict):
            raise InvalidInput("body: must be a JSON object", field="body")
        name, arguments = body.get("name"), body.get("arguments")
        if not isinstance(name, str) or not name.strip() or len(name) > 256:
            raise InvalidInput("name: must be a string of 1 to 256 characters", field="name")
        if not isinstance(arguments, str) or not arguments.strip() or len(arguments) > 1024:
            raise InvalidInput(
                "arguments: must be VW arguments, 1 to 1024 characters", field="arguments"
            )
        policy = cls(name.strip(), " ".join(arguments.split()))
        policy.vw_args  # noqa: B018 - validates
        return policy


def finite(value: int | float) -> bool:
    """Whether a JSON number is a finite float (a 400-digit integer is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _number(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not finite(value):
        raise InvalidInput(f"{field}: must be a number", field=field)
    if not low <= value <= high:
        raise InvalidInput(f"{field}: must be between {low:g} and {high:g}", field=field)
    return float(value)
