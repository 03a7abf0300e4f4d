"""Replay: logged decisions in, each target policy's estimated value with intervals out.

Three streaming passes over the window, chunk by chunk, in bounded memory:

1. (only for ``vw:"ARGS"`` targets) train them on the first ``train_fraction`` of the window's
   decisions; every target is then evaluated on the rest only, so all are compared on the
   same held-out decisions;
2. fit the cross-fitted reward model (``RewardModel``) on the evaluated decisions, unless the
   caller brings one (the gate brings ``ContextRewardModel``, fitted on other decisions);
3. recompute every target's slot probabilities and feed the estimators.

Each slot's reward is the ``metric`` the options ask for (``logging.objective``): by default
the learner's objective, so the gate judges versions on what they were taught; or clicks,
conversions or revenue, whatever the objective.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine

from slatebandit.bandit import Exploration
from slatebandit.config import Settings
from slatebandit.errors import InvalidInput
from slatebandit.logging.objective import METRICS, meaning, reward_rule
from slatebandit.policies import exploration_of
from slatebandit.replay.estimators import (
    DEFAULT_ESTIMATORS,
    Estimate,
    Estimator,
    make_estimator,
)
from slatebandit.replay.log import (
    Chunk,
    Revisions,
    Window,
    extent,
    nth_decision,
    read_chunks,
)
from slatebandit.replay.passes import evaluate, new_tally
from slatebandit.replay.reward_model import ItemRewardModel, RewardModel
from slatebandit.replay.shards import evaluate_sharded
from slatebandit.replay.targets import Target, parse_target

Progress = Callable[[str, int, int], None]  # (phase, decisions done, decisions in the phase)
SUPPORT_WARNING = 0.01  # mean target mass outside the logger's support
SHARD_DECISIONS = 50_000  # the fewest decisions a slice of the evaluation pass is worth
ESS_WARNING = 0.01  # effective sample size as a share of slots
NOTE = (
    "Replay re-weighs the candidates that were logged: a policy that would have retrieved "
    "other candidates (a retrieval change) cannot be evaluated offline."
)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str | float | int, field: str, now: float | None = None) -> float:
    """Seconds since the epoch from a number, an ISO 8601 date or time (UTC unless it says
    otherwise), or an age such as ``90m``, ``12h`` or ``7d`` (that long before now)."""
    number: float | None = None
    if isinstance(text, int | float) and not isinstance(text, bool):
        number = float(text)
    else:
        try:
            number = float(str(text).strip())
        except ValueError:
            pass
    if number is not None:
        if not math.isfinite(number):
            raise InvalidInput(f"{field}: must be a finite time, got {text!r}", field=field)
        return number
    value = str(text).strip()
    if len(value) > 1 and value[-1] in _UNITS:
        try:
            age = float(value[:-1]) * _UNITS[value[-1]]
        except ValueError:
            age = None
        if age is not None:
            return (time.time() if now is None else now) - age
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{field}: {value!r} is not a time (use 2026-11-01, 2026-11-01T12:00, 1798000000 "
            "or an age such as 7d)",
            field=field,
        ) from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class ReplayOptions:
    policies: tuple[str, ...]
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    since: float | None = None
    until: float | None = None  # default: now minus the reward wait (rewards still coming)
    bootstrap: int = 1000
    seed: int = 0
    clip: float = 100.0
    train_fraction: float = 0.5
    metric: str = "reward"  # what a slot's reward is: one of logging.objective.METRICS

    @classmethod
    def parse(
        cls,
        policies: Sequence[str],
        estimators: Sequence[str] | None = None,
        since: str | float | None = None,
        until: str | float | None = None,
        metric: str = "reward",
        **numbers: Any,
    ) -> ReplayOptions:
        """Options from what a caller typed (CLI flags, a JSON body), validated: times may be
        ISO 8601, epoch seconds or ages (``parse_time``); ``numbers``: bootstrap, seed, clip,
        train_fraction."""
        options = cls(
            policies=tuple(policies),
            estimators=tuple(estimators or DEFAULT_ESTIMATORS),
            since=None if since is None else parse_time(since, "since"),
            until=None if until is None else parse_time(until, "until"),
            metric=metric,
            **numbers,
        )
        options.validate()
        return options

    def validate(self) -> None:
        if not self.policies:
            raise InvalidInput("at least one policy is required", field="policy")
        if not self.estimators:
            raise InvalidInput("at least one estimator is required", field="estimators")
        if self.metric not in METRICS:
            raise InvalidInput(
                f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}", field="metric"
            )
        for name in self.estimators:
            try:
                make_estimator(name, clip=self.clip)
            except ValueError as exc:
                raise InvalidInput(str(exc), field="estimators") from None
        if not 0 <= self.bootstrap <= 10_000:
            raise InvalidInput("bootstrap must be in [0, 10000]", field="bootstrap")
        if not self.clip > 0:
            raise InvalidInput("clip must be > 0", field="clip")
        if not 0 < self.train_fraction < 1:
            raise InvalidInput("train_fraction must be in (0, 1)", field="train_fraction")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise InvalidInput("since must be before until", field="since")


@dataclass
class Report:
    n_decisions: int
    n_slots: int
    policies: list[tuple[str, list[Estimate]]]
    warnings: list[str]
    window: dict[str, float | int | None] = field(default_factory=dict)
    bootstrap: int = 0
    seed: int = 0
    metric: str = "reward"  # what was estimated (``logging.objective.METRICS``)...
    meaning: str = "reward per slot"  # ...in words, with its unit
    # The estimators themselves, by policy, for paired comparisons (``replay.gate``).
    accumulators: dict[str, list[Estimator]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, object]:
        return {
            "n_decisions": self.n_decisions,
            "n_slots": self.n_slots,
            "policies": [
                {"policy": spec, "estimates": [e.as_dict() for e in estimates]}
                for spec, estimates in self.policies
            ],
            "warnings": list(self.warnings),
            "window": dict(self.window),
            "bootstrap": self.bootstrap,
            "seed": self.seed,
            "metric": self.metric,
            "meaning": self.meaning,
            "note": NOTE,
        }


def replay(
    engine: Engine,
    settings: Settings,
    options: ReplayOptions,
    progress: Progress | None = None,
    window: Window | None = None,
    reward_model: ItemRewardModel | None = None,
    processes: int = 1,
) -> Report:
    """Replay ``options.policies`` over the window the options give (or ``window``); DM and DR
    use ``reward_model`` if given, else item means fitted on the evaluated decisions. With
    ``processes`` above 1, the evaluation pass runs over that many slices of the window at
    once (``replay.shards``), where it can: see ``_shards``."""
    options.validate()
    until = options.until if options.until is not None else time.time() - settings.reward_wait
    since = options.since if options.since is not None else float("-inf")
    window = window or Window(since, until)
    targets = [parse_target(spec, engine) for spec in options.policies]
    try:
        return _replay(
            engine,
            settings,
            options,
            window,
            targets,
            progress or _quiet,
            reward_model,
            processes,
        )
    finally:
        for target in targets:
            target.close()


def _quiet(phase: str, done: int, total: int) -> None:
    pass


def _replay(
    engine: Engine,
    settings: Settings,
    options: ReplayOptions,
    window: Window,
    targets: Sequence[Target],
    progress: Progress,
    reward_model: ItemRewardModel | None = None,
    processes: int = 1,
) -> Report:
    with engine.connect() as conn:
        rule = reward_rule(conn, settings, options.metric)  # read once: every pass shares it

    def chunks(window: Window) -> Iterator[tuple[Chunk, Revisions]]:
        return read_chunks(engine, window, reward=rule)

    warnings: list[str] = []
    if any(t.trains for t in targets):
        with engine.connect() as conn:
            whole = extent(conn, window)
            if whole.decisions < 2:
                raise InvalidInput(
                    'vw:"ARGS" policies need at least 2 decisions in the window: one to train '
                    "on, one to evaluate",
                    field="policy",
                )
            first_evaluated = nth_decision(
                conn, window, int(whole.decisions * options.train_fraction)
            )
            assert first_evaluated is not None
        train_through = first_evaluated - 1
        trained = dataclasses.replace(window, through=train_through)
        done = 0
        for chunk, revisions in chunks(trained):
            for target in targets:
                if target.trains:
                    target.learn(chunk, revisions)
            done += len(chunk.decision_ids)
            progress("train", done, whole.decisions)
        window = dataclasses.replace(window, after=train_through, through=None)
        warnings.append(
            f"vw:ARGS policies trained on the first {options.train_fraction:.0%} of the window; "
            "every policy is evaluated on the decisions after it"
        )
    else:
        train_through = None
    with engine.connect() as conn:
        evaluated = extent(conn, window)
    # Pin the window to the decisions counted now: every pass reads exactly these, even if
    # more commit meanwhile (an ``until`` in the future).
    window = dataclasses.replace(window, through=evaluated.last_id or window.after)

    fallback = exploration_of(settings)
    fits = reward_model is None and any(make_estimator(n).uses_model for n in options.estimators)
    shards = _shards(processes, targets, reward_model, evaluated.decisions)
    if shards > 1:
        tally = evaluate_sharded(
            engine,
            settings,
            options,
            window,
            evaluated.decisions,
            None if fits else RewardModel(),
            shards,
            progress,
            targets,
            rule,
        )
    else:
        model = reward_model or RewardModel()
        if fits:
            model = RewardModel.fit(
                engine,
                window,
                rule,
                lambda done: progress("reward model", done, evaluated.decisions),
            )
        tally = evaluate(
            chunks(window),
            targets,
            new_tally(targets, options),
            model,
            fallback,
            lambda done: progress("replay", done, evaluated.decisions),
        )
    estimators, outside, slots = tally.estimators, tally.outside, tally.slots

    results = [(spec, [e.get() for e in ests]) for spec, ests in estimators.items()]
    scoring = any(t.uses_exploration for t in targets)
    warnings += _warnings(results, outside, slots, evaluated.decisions)
    if tally.unknown_logger:
        warnings.insert(0, _unknown_logger(tally.unknown_logger, fallback if scoring else None))
    return Report(
        n_decisions=evaluated.decisions,
        n_slots=slots,
        policies=results,
        warnings=warnings,
        window={
            "since": None if not np.isfinite(window.since) else window.since,
            "until": None if not np.isfinite(window.until) else window.until,
            "first_decision_at": evaluated.first_at,
            "last_decision_at": evaluated.last_at,
            "trained_through_decision": train_through,
        },
        bootstrap=options.bootstrap,
        seed=options.seed,
        metric=options.metric,
        meaning=meaning(options.metric, rule),
        accumulators=estimators,
    )


def _shards(
    processes: int, targets: Sequence[Target], given: ItemRewardModel | None, decisions: int
) -> int:
    """How many slices the passes run over: ``processes``, unless a target was trained here
    (its model lives in this process), the caller gave a reward model (the gate's context
    model holds a VW workspace), or the window is too small to pay for starting a process
    (about a second)."""
    if any(t.trains for t in targets) or given is not None:
        return 1
    return max(1, min(processes, decisions // SHARD_DECISIONS))


def _unknown_logger(decisions: int, fallback: Exploration | None) -> str:
    text = (
        f"{decisions} decisions come from a logger slatebandit cannot recompute (imported "
        "logs): its support is assumed to cover every candidate"
    )
    if fallback is not None:
        param = fallback.to_log()["param"]
        text += f"; popular and vw targets explore with {fallback.kind} {param} (the settings)"
    return text


def _warnings(
    results: list[tuple[str, list[Estimate]]],
    outside: dict[str, float],
    slots: int,
    decisions: int,
) -> list[str]:
    if decisions == 0:
        return ["no decisions in the window: nothing to evaluate"]
    out = []
    for spec, estimates in results:
        mass = outside[spec] / slots if slots else 0.0
        if mass > SUPPORT_WARNING:
            out.append(
                f"{spec}: {mass:.1%} of its probability falls on candidates the logger could "
                "not show in that slot (poor support); weighted estimates miss that part"
            )
        weighted = [e for e in estimates if e.estimator != "dm"]
        if weighted:
            worst = min(weighted, key=lambda e: e.ess)
            if worst.ess < max(ESS_WARNING * slots, 30):
                out.append(
                    f"{spec}: effective sample size {worst.ess:.0f} of {slots} slots "
                    f"({worst.estimator}); its intervals are unreliable"
                )
    return out
