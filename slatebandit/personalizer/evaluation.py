"""Personalizer offline evaluations: what other policies would have earned on a loop's log.

Every activated slot of the events in [start, end] is a logged (probability, reward) pair.
Each policy gives the probability it would have picked the logged action in that slot, over
the same allowed actions:

- ``Online``: the loop as it ran (its logged probabilities: the on-policy average);
- ``Baseline``: the caller's baseline action (the first non-excluded one in a single slot);
- ``Random``: uniform over the slot's allowed actions;
- ``Custom``: each VW argument set, trained from scratch on the window in time order and
  scored on each event before it learns it (progressive validation), exploring as the loop
  does (``explorationPercentage``). With ``enablePolicyOptimization`` (v1.0:
  ``enableOfflineExperimentation``) a few learning rates of the loop's own arguments are tried
  too, and the best becomes ``optimalPolicy``.

Estimates are SNIPS (``replay.estimators``) with a 95% bootstrap interval over events for the
whole window; for the time series, per 5-minute bucket sums, so any interval Personalizer
offers (5 to 1440 minutes, expanding or rolling) is summed from them with a delta-method
interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine

from slatebandit.bandit import VWScorer
from slatebandit.logging import personalizer as store
from slatebandit.logging.learning import slot_reward
from slatebandit.personalizer.arguments import scorer_arguments, with_learning_rate
from slatebandit.personalizer.configuration import (
    PolicyConfiguration,
    ServiceConfiguration,
    iso_time,
)
from slatebandit.personalizer.events import Event, slot_pmf
from slatebandit.replay.bootstrap import Bootstrap
from slatebandit.replay.estimators import SNIPS

BUCKET_SECONDS = 300
MOMENTS = 7  # the sums each bucket keeps (``bucket_sums``)
STATUS = {"running": "Running", "succeeded": "Succeeded", "failed": "Failed"}
LEGACY_STATUS = {"running": "pending", "succeeded": "completed", "failed": "failed"}
LEARNING_RATES = (0.01, 0.1, 0.5)  # tried by policy optimization, on the loop's arguments
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Logged:
    """The window's activated slots, one row each, in event order."""

    events: list[Event]
    event_index: np.ndarray  # per slot: its event's position in ``events``
    slot: np.ndarray
    created_at: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray


def read_log(
    engine: Engine, loop: str, start: float, end: float, service: ServiceConfiguration
) -> Logged:
    events: list[Event] = []
    rows: list[tuple[int, int, float, float, float]] = []
    after = 0
    with engine.connect() as conn:
        while True:
            batch = store.events_after(conn, loop, after, until=end, since=start, limit=2000)
            for stored in batch:
                if not stored.activated:
                    continue
                event = Event.from_bytes(stored.payload)
                for j, slot in enumerate(event.slots):
                    got = stored.rewards.get(j, [])
                    value = slot_reward(got, service.reward_aggregation, service.default_reward)
                    rows.append((len(events), j, stored.created_at, slot.propensity, value))
                events.append(event)
            if len(batch) < 2000:
                break
            after = batch[-1].id
    table = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return Logged(
        events,
        table[:, 0].astype(np.int64),
        table[:, 1].astype(np.int64),
        table[:, 2],
        table[:, 3],
        table[:, 4],
    )


def baseline_probabilities(log: Logged) -> np.ndarray:
    out = np.zeros(len(log.slot))
    for row, (e, j) in enumerate(zip(log.event_index, log.slot, strict=True)):
        event, slot = log.events[e], log.events[e].slots[j]
        pmf = slot_pmf(
            np.zeros(len(event.action_ids)), event.allowed(j), slot.baseline, "Baseline", 0
        )
        out[row] = pmf[slot.chosen]
    return out


def random_probabilities(log: Logged) -> np.ndarray:
    return np.array(
        [
            1.0 / log.events[e].allowed(j).sum()
            for e, j in zip(log.event_index, log.slot, strict=True)
        ]
    )


def learned_probabilities(log: Logged, vw_args: str, exploration: float) -> np.ndarray:
    """Progressive validation of a fresh model with ``vw_args``: each slot's probability of the
    logged action before the model learns that event."""
    scorer = VWScorer(vw_args)
    every = "mtr" not in vw_args.split()
    out = np.zeros(len(log.slot))
    try:
        row = 0
        for e, event in enumerate(log.events):
            lines = [event.action_line(i) for i in range(len(event.action_ids))]
            first = row
            while row < len(log.slot) and log.event_index[row] == e:
                j = int(log.slot[row])
                scores = scorer.score_lines(event.shared_line(j), lines)
                pmf = slot_pmf(scores, event.allowed(j), 0, "Online", exploration)
                out[row] = pmf[event.slots[j].chosen]
                row += 1
            for r in range(first, row):
                scorer.learn(event.example(int(log.slot[r]), float(log.reward[r]), every))
    finally:
        scorer.finish()
    return out


def bucket_sums(log: Logged, target: np.ndarray) -> list[list[float]]:
    """Per 5-minute bucket: [start, slots, sum wr, sum w, sum wr^2, sum w^2, sum w*wr, slots
    with w > 0] (w: importance weight, wr: weight times reward)."""
    weight = target / log.propensity
    wr = weight * log.reward
    buckets: dict[int, np.ndarray] = {}
    keys = (log.created_at // BUCKET_SECONDS).astype(np.int64)
    for key in np.unique(keys):
        m = keys == key
        buckets[int(key)] = np.array(
            [
                m.sum(),
                wr[m].sum(),
                weight[m].sum(),
                (wr[m] ** 2).sum(),
                (weight[m] ** 2).sum(),
                (weight[m] * wr[m]).sum(),
                (weight[m] > 0).sum(),
            ]
        )
    return [[k * BUCKET_SECONDS, *v.tolist()] for k, v in sorted(buckets.items())]


def snips_summary(sums: Sequence[float]) -> dict[str, Any]:
    """SNIPS and its delta-method 95% interval from summed moments (``bucket_sums`` order)."""
    n, swr, sw, swr2, sw2, swwr, _nonzero = sums
    if n == 0 or sw == 0:
        return {"expectedReward": None, "confidenceInterval": [None, None]}
    value = swr / sw
    variance = max((swr2 - 2 * value * swwr + value * value * sw2) / (sw * sw), 0.0)
    half = Z95 * math.sqrt(variance)
    return {"expectedReward": value, "confidenceInterval": [value - half, value + half]}


def evaluate(
    engine: Engine,
    loop: str,
    request: dict[str, Any],
    service: ServiceConfiguration,
    policy: PolicyConfiguration,
    progress: Callable[[str], None] = lambda phase: None,
) -> dict[str, Any]:
    """Every policy's estimate over the request's window (``request``: start, end, policies,
    optimize); the result ``render`` turns into Personalizer's shapes."""
    log = read_log(engine, loop, request["start"], request["end"], service)
    decisions = log.event_index
    candidates: list[tuple[str, str, str, np.ndarray]] = [
        ("Online", policy.arguments, "Online", log.propensity.copy()),
        ("Baseline", "", "Baseline", baseline_probabilities(log)),
        ("Random", "", "Random", random_probabilities(log)),
    ]
    for custom in request["policies"]:
        progress(f"custom policy {custom['name']}")
        args = scorer_arguments(custom["arguments"], "policies.arguments")
        candidates.append(
            (
                custom["name"],
                custom["arguments"],
                "Custom",
                learned_probabilities(log, args, service.exploration),
            )
        )
    if request.get("optimize"):
        for rate in LEARNING_RATES:
            progress(f"policy optimization, learning rate {rate}")
            arguments = with_learning_rate(policy.arguments, rate)
            target = learned_probabilities(
                log, scorer_arguments(arguments, "arguments"), service.exploration
            )
            candidates.append(
                (f"Optimized (-l {rate:g})", arguments, "OfflineExperimentation", target)
            )
    results: list[dict[str, Any]] = []
    for name, arguments, source, target in candidates:
        estimator = SNIPS(Bootstrap(500, seed=0))
        estimator.add(log.propensity, log.reward, target, decision=decisions)
        estimate = estimator.get() if len(decisions) else None
        results.append(
            {
                "name": name,
                "arguments": arguments,
                "policySource": source,
                "estimate": None if estimate is None else estimate.as_dict(),
                "slots": int(len(decisions)),
                "buckets": bucket_sums(log, target),
            }
        )
    optimal = None  # the name of the best policy the optimization found, as Personalizer's
    searched = [
        r
        for r in results
        if r["policySource"] == "OfflineExperimentation"
        and r["estimate"]
        and r["estimate"]["value"] is not None
    ]
    if searched:
        optimal = max(searched, key=lambda r: r["estimate"]["value"])["name"]
    return {"policies": results, "optimalPolicy": optimal, "events": len(log.events)}


def render(
    evaluation: dict[str, Any],
    *,
    start: float | None = None,
    end: float | None = None,
    interval_minutes: int = 5,
    rolling: bool = False,
    legacy: bool = False,
) -> dict[str, Any]:
    """An evaluation row in Personalizer's shapes: ``content`` (2022-09-01-preview: summary and
    time series per policy) and ``policyResults`` (v1.0: summary per window and a total);
    ``legacy`` spells the status as v1.0 and v1.1-preview did."""
    request, result = evaluation["request"], evaluation["result"]
    body: dict[str, Any] = {
        "id": evaluation["id"],
        "name": request["name"],
        "startTime": iso_time(request["start"]),
        "endTime": iso_time(request["end"]),
        "creationTime": iso_time(evaluation["created_at"]),
        "evaluationType": "Manual",
        "status": (LEGACY_STATUS if legacy else STATUS)[evaluation["status"]],
        "jobId": evaluation["id"],
    }
    if evaluation.get("error"):
        body["description"] = evaluation["error"]
    if result is None:
        return body
    body["optimalPolicy"] = result["optimalPolicy"]
    width = interval_minutes * 60
    start = request["start"] if start is None else start
    end = request["end"] if end is None else end
    values, results = [], []
    for policy in result["policies"]:
        series = _series(policy["buckets"], start, end, width, rolling)
        estimate = policy["estimate"] or {}
        total = {
            "expectedReward": estimate.get("value"),
            "confidenceInterval": [estimate.get("ci_low"), estimate.get("ci_high")],
        }
        values.append(
            {
                "name": policy["name"],
                "arguments": policy["arguments"],
                "policySource": policy["policySource"],
                "slotId": "",
                "summary": total,
                "timeseries": {"data": series},
            }
        )
        results.append(
            {
                "name": policy["name"],
                "arguments": policy["arguments"],
                "policySource": policy["policySource"],
                "summary": [
                    _legacy(s, width)
                    for s in _windows(policy["buckets"], start, end, width, rolling)
                ],
                "totalSummary": _legacy(_total(policy["buckets"]), end - start),
            }
        )
    body["content"] = {
        "startTime": iso_time(start),
        "endTime": iso_time(end),
        "intervalInMinutes": interval_minutes,
        "value": values,
    }
    body["policyResults"] = results
    return body


def _windows(
    buckets: list[list[float]], start: float, end: float, width: float, rolling: bool
) -> list[list[float]]:
    """Summed bucket moments per window of ``width`` seconds: [window start, *sums]. Windows
    start at ``start`` rounded down to a bucket, so the bucket holding ``start`` counts."""
    origin = start - start % BUCKET_SECONDS
    out: dict[float, np.ndarray] = {}
    for b in buckets:
        if origin <= b[0] < end:
            window = origin + ((b[0] - origin) // width) * width
            out[window] = out.get(window, np.zeros(MOMENTS)) + np.array(b[1:])
    ordered = sorted(out.items())
    if not rolling:  # expanding: each window sums everything from the start
        running = np.zeros(MOMENTS)
        expanded = []
        for window, sums in ordered:
            running = running + sums
            expanded.append((window, running))
        ordered = expanded
    return [[window, *sums.tolist()] for window, sums in ordered]


def _series(
    buckets: list[list[float]], start: float, end: float, width: float, rolling: bool
) -> list[dict[str, Any]]:
    return [
        {"timeStamp": iso_time(w[0]), **snips_summary(w[1:])}
        for w in _windows(buckets, start, end, width, rolling)
    ]


def _total(buckets: list[list[float]]) -> list[float]:
    sums = np.sum([b[1:] for b in buckets], axis=0) if buckets else np.zeros(MOMENTS)
    return [0.0, *np.asarray(sums).tolist()]


def _legacy(window: list[float], width: float) -> dict[str, Any]:
    at, n, swr, sw, swr2, _sw2, _swwr, nonzero = window
    summary = snips_summary(window[1:])
    low, high = summary["confidenceInterval"]
    return {
        "timeStamp": iso_time(at),
        "ipsEstimatorNumerator": swr,
        "ipsEstimatorDenominator": n,
        "snipsEstimatorDenominator": sw,
        "aggregateTimeWindow": f"PT{int(width // 60)}M",
        "nonZeroProbability": nonzero,
        "sumOfSquares": swr2,
        "confidenceInterval": None if low is None else (high - low) / 2,
        "averageReward": summary["expectedReward"],
    }
