"""Replay's evaluation pass: each chunk of logged decisions, every target's slot probabilities
over it, fed to that target's estimators.

``replay`` runs the pass over its window in one process, or (``replay.shards``) over slices
of the window in several, adding their ``Tally``s: the estimators are mergeable accumulators
and the bootstrap's draws depend on the decision alone, so the sum is the one-pass result
(up to the order of floating-point additions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from slatebandit.bandit import Exploration
from slatebandit.replay.bootstrap import Bootstrap
from slatebandit.replay.estimators import Estimator, make_estimator
from slatebandit.replay.log import Chunk, Revisions
from slatebandit.replay.reward_model import ItemRewardModel
from slatebandit.replay.targets import Target


class Options(Protocol):
    """What the pass needs of ``replay.ReplayOptions``."""

    @property
    def policies(self) -> Sequence[str]: ...
    @property
    def estimators(self) -> Sequence[str]: ...
    @property
    def bootstrap(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def clip(self) -> float: ...


@dataclass
class Tally:
    """What the pass has gathered: each target's estimators, the probability mass it put
    outside the logger's support, and counts."""

    estimators: dict[str, list[Estimator]]  # target spec -> its estimators
    outside: dict[str, float]
    decisions: int = 0
    slots: int = 0
    unknown_logger: int = 0  # decisions from a logger replay cannot recompute

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            {
                spec: [a + b for a, b in zip(mine, other.estimators[spec], strict=True)]
                for spec, mine in self.estimators.items()
            },
            {spec: mass + other.outside[spec] for spec, mass in self.outside.items()},
            self.decisions + other.decisions,
            self.slots + other.slots,
            self.unknown_logger + other.unknown_logger,
        )


def new_tally(targets: Sequence[Target], options: Options) -> Tally:
    """An empty tally: each target's estimators, sharing one bootstrap."""
    bootstrap = Bootstrap(options.bootstrap, options.seed) if options.bootstrap else None
    estimators = {
        t.spec: [make_estimator(n, bootstrap, options.clip) for n in options.estimators]
        for t in targets
    }
    return Tally(estimators, dict.fromkeys(estimators, 0.0))


def evaluate(
    chunks: Iterable[tuple[Chunk, Revisions]],
    targets: Sequence[Target],
    tally: Tally,
    model: ItemRewardModel,
    fallback: Exploration,
    on_chunk: Callable[[int], None] = lambda decisions: None,
) -> Tally:
    """Feed every chunk to ``tally``; ``on_chunk`` hears the decisions done so far."""
    for chunk, revisions in chunks:
        evaluate_chunk(chunk, revisions, targets, tally, model, fallback)
        tally.slots += len(chunk.slot)
        tally.unknown_logger += sum(
            chunk.explorations[code] is None for code in chunk.exploration.tolist()
        )
        tally.decisions += len(chunk.decision_ids)
        on_chunk(tally.decisions)
    return tally


def evaluate_chunk(
    chunk: Chunk,
    revisions: Revisions,
    targets: Sequence[Target],
    tally: Tally,
    model: ItemRewardModel,
    fallback: Exploration,
) -> None:
    ids = chunk.slot_decisions
    mu = model.item_values(chunk.decision_ids, chunk.keys)  # (D, C)
    q_logged = mu[chunk.row, chunk.chosen]
    depth = np.bincount(chunk.row, minlength=len(chunk.decision_ids))[chunk.row]
    tail = model.continuation(ids, chunk.slot, depth)
    for target in targets:
        probs = target.probabilities(chunk, revisions, mu, fallback)
        q_target = probs.expected
        tally.outside[target.spec] += float(probs.outside.sum())
        for estimator in tally.estimators[target.spec]:
            cascade = estimator.name == "cascade-dr"
            estimator.add(
                chunk.p_log,
                chunk.reward,
                probs.p_target,
                decision=ids,
                q_logged=q_logged + tail if cascade else q_logged,
                q_target=q_target + tail if cascade else q_target,
            )
