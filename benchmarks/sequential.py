"""The canary's sequential test alone, simulated: how often it rejects an equal canary, how
often and how soon it catches a worse one, against a naive fixed-horizon test that peeks.

    python -m benchmarks.sequential [--runs 1000] [--budget B] [--share S] [--margin M]

(budget, share and margin default to the service's: SLATEBANDIT_CANARY_SLATES, _CANARY_SHARE
and _GATE_MARGIN.)

A stream of slates; each goes to the canary with probability ``--share``, else to the
champion. A slate's per-slot reward is (clicks among k = 10 slots) / 10, each slot clicked
with probability p: the champion's p is 0.06, the canary's 0.06 x (1 + lift) for lifts 0
(equal arms), -10%, -20%, -30%, -50%, +10% and +30%. ``CanaryRule.judge`` (the service's
rule, unchanged) looks after every 50 slates, as the service would, and the run stops at the
first verdict. No verdict by the end of the simulated stream (1.3 x the slates the budget
needs) counts as "none".

For comparison, the same rule with the fixed-horizon interval (difference +- 1.96 se) in
place of the confidence sequence at every look, looked at just as often on the same streams:
the rate at which it rejects an equal canary is what peeking costs. (The service's rule uses
that interval once, at the budget, a look fixed in advance: that is valid.)

Figures go to stdout and benchmarks/results/sequential.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slatebandit.config import Settings
from slatebandit.policies.canary import CanaryRule
from slatebandit.stats import Moments, difference

RESULTS = Path(__file__).parent / "results" / "sequential.json"
K = 10  # slots per slate
CHAMPION_P = 0.06  # per-slot click probability
EVERY = 50  # slates between two looks
LIFTS = (0.0, -0.1, -0.2, -0.3, -0.5, 0.1, 0.3)
Z95 = 1.959964
CHUNK = 100  # runs simulated at once: bounds memory at about 100 MB

Judge = Callable[[CanaryRule, Moments, Moments], str | None]


@dataclass(frozen=True)
class Outcomes:
    """Per run: the verdict ("promote", "reject" or "none") and the canary slates it took."""

    verdicts: np.ndarray
    canary_slates: np.ndarray  # at the verdict; -1 for "none"

    def rate(self, verdict: str) -> float:
        return float(np.mean(self.verdicts == verdict))

    def slates_to_verdict(self, q: float) -> float | None:
        done = self.canary_slates[self.canary_slates >= 0]
        return float(np.quantile(done, q)) if done.size else None


def sequential_verdict(rule: CanaryRule, canary: Moments, champion: Moments) -> str | None:
    """The service's rule: ``CanaryRule.judge`` on the confidence sequence."""
    return rule.judge(canary, champion).verdict


def fixed_horizon_verdict(rule: CanaryRule, canary: Moments, champion: Moments) -> str | None:
    """The same rule, in the same order, with difference +- 1.96 se: valid at one look chosen
    in advance, not at every look."""
    if min(canary.n, champion.n) < rule.min_slates:
        return None
    d = difference(canary, champion, rule.alpha, rule.horizon)
    half = Z95 * d.sigma / math.sqrt(canary.n + champion.n)
    low, high = d.estimate - half, d.estimate + half
    threshold = -rule.margin * abs(champion.mean)
    if high < threshold:
        return "reject"
    if low >= threshold:
        return "promote"
    if canary.n >= rule.budget:
        return "reject" if high < 0 else "promote"
    return None


def looks(
    rule: CanaryRule, p_canary: float, p_champion: float, runs: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per run, the two arms' Moments at each look: arrays (looks, 3) of n, mean, m2 for the
    canary and the champion, from integer click counts (so m2 is exact and never negative)."""
    slates = int(math.ceil(1.3 * rule.budget / rule.share / EVERY)) * EVERY
    at = np.arange(EVERY - 1, slates, EVERY)
    for start in range(0, runs, CHUNK):
        size = min(CHUNK, runs - start)
        to_canary = rng.random((size, slates)) < rule.share
        clicks = rng.binomial(K, np.where(to_canary, p_canary, p_champion)).astype(np.int64)
        arms = []
        for mask in (to_canary, ~to_canary):
            c = np.where(mask, clicks, 0)
            n = np.cumsum(mask, axis=1, dtype=np.int64)[:, at]
            s = np.cumsum(c, axis=1)[:, at]
            q = np.cumsum(c * c, axis=1)[:, at]
            safe = np.maximum(n, 1)
            # rewards are clicks / K: mean = s / (n K), m2 = (n q - s^2) / (n K^2)
            arms.append(np.stack([n, s / (safe * K), (n * q - s * s) / (safe * K * K)], axis=-1))
        yield from zip(arms[0], arms[1], strict=True)


def simulate(
    rule: CanaryRule,
    p_canary: float,
    p_champion: float = CHAMPION_P,
    runs: int = 200,
    seed: int = 0,
    verdict: Judge = sequential_verdict,
) -> Outcomes:
    """``runs`` seeded canaries judged every ``EVERY`` slates, each stopped at its first verdict."""
    rng = np.random.default_rng(seed)
    verdicts, spent = [], []
    for canary, champion in looks(rule, p_canary, p_champion, runs, rng):
        found, slates = "none", -1
        for a, b in zip(canary, champion, strict=True):
            said = verdict(rule, Moments(int(a[0]), a[1], a[2]), Moments(int(b[0]), b[1], b[2]))
            if said is not None:
                found, slates = said, int(a[0])
                break
        verdicts.append(found)
        spent.append(slates)
    return Outcomes(np.asarray(verdicts), np.asarray(spent))


def summary(outcomes: Outcomes) -> dict[str, float | None]:
    return {
        "promote": outcomes.rate("promote"),
        "reject": outcomes.rate("reject"),
        "none": outcomes.rate("none"),
        "median_canary_slates": outcomes.slates_to_verdict(0.5),
        "p90_canary_slates": outcomes.slates_to_verdict(0.9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    defaults = Settings()
    parser.add_argument("--budget", type=int, default=defaults.canary_slates, help="canary slates")
    parser.add_argument("--share", type=float, default=defaults.canary_share)
    parser.add_argument("--margin", type=float, default=defaults.gate_margin)
    args = parser.parse_args()
    rule = CanaryRule(margin=args.margin, budget=args.budget, share=args.share)
    started = time.perf_counter()
    arms = {}
    for seed, lift in enumerate(LIFTS):
        outcomes = simulate(rule, CHAMPION_P * (1 + lift), runs=args.runs, seed=seed)
        arms[f"{lift:+.0%}"] = summary(outcomes)
        print(f"canary {lift:+.0%}: {json.dumps(arms[f'{lift:+.0%}'])}", flush=True)
    # the same streams as the equal arms above (seed 0), judged by the naive rule
    naive = simulate(rule, CHAMPION_P, runs=args.runs, seed=0, verdict=fixed_horizon_verdict)
    figures = {
        "runs": args.runs,
        "budget": args.budget,
        "share": args.share,
        "margin": args.margin,
        "alpha": rule.alpha,
        "k": K,
        "champion_p": CHAMPION_P,
        "look_every_slates": EVERY,
        "false_rejection": arms["+0%"]["reject"],
        "naive_fixed_horizon_false_rejection": naive.rate("reject"),
        "naive_fixed_horizon_equal_arms": summary(naive),
        "arms": arms,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "arms"}, indent=2))
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
