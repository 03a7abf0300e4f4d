"""The policies replay can evaluate, and the probability each gives every logged slot.

A target is the serving policy itself (``PolicyTarget``), asked for its pmf over each
decision's logged candidates (``Policy.logged_scores``, ``Policy.logged_pmfs``). A target's
probability for a logged slot is conditional: the probability that it puts the logged item in
that slot, over the logged candidates, given the logged items of the earlier slots. Targets
that score candidates (``popular``, ``vw@V``, ``vw:"ARGS"``) turn their scores into slot pmfs
with the serving slate builder and the decision's own layout and exploration
(``bandit.slot_pmfs``), so "what would model V have earned" means "served exactly the same
way, with V's scores". Decisions whose logger we cannot recompute (imported logs) use the
configured exploration instead.

Under merchandising rules, a target is replayed under the rules each decision logged: its
scores shift as the logging policy's did, a pinned slot is the pinned item with probability 1
for any target, and a promoted slot chooses among the same promotable candidates. So a
target's probabilities on a rule-shaped log are exact, and the logging policy replays with
weight 1.

SPECs:
    random       uniform over the candidates still allowed, in every slot
    popular      the slate builder over the logged popularity bands (ties: retrieval order)
    logged       the logging policy itself (weights are 1: a sanity check)
    vw@V         model version V from the registry
    vw:"ARGS"    a new VW model with ARGS, trained on the earlier part of the window
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Engine

from slatebandit.bandit import Exploration, VWScorer, slot_example, slot_pools
from slatebandit.errors import ConfigError, InvalidInput
from slatebandit.policies import Policy, Popular, Random, VWPolicy
from slatebandit.policies.registry import load_version
from slatebandit.replay.log import Chunk, Revisions


@dataclass(frozen=True)
class SlotProbabilities:
    p_target: np.ndarray  # (S,) the target's probability of the logged item
    expected: np.ndarray  # (S,) the target pmf's mean of ``item_value`` over the candidates
    outside: np.ndarray  # (S,) target mass on candidates the logger could not show there


@dataclass(frozen=True)
class SlotState:
    """Logged slots at one position, with what the slate builder knew when it filled them.

    Its (n, C) masks may be views of the walk's own, valid until the next position is drawn.
    """

    at: np.ndarray  # indices into the chunk's per-slot arrays
    rows: np.ndarray  # their decisions
    take: slice | np.ndarray  # selects their decisions' rows: every row (a slice) or ``rows``
    kinds: np.ndarray  # layout letters
    allowed: np.ndarray  # (n, C) not shown in an earlier slot
    novel: np.ndarray  # (n, C) of a category not yet in the slate
    fresh: np.ndarray  # (n, C)
    promotable: np.ndarray  # (n, C) a promotion's match
    logger_pool: np.ndarray  # (n, C) where the logger's pmf was positive


def walk_slots(chunk: Chunk) -> Iterator[SlotState]:
    """Slot positions 0, 1, ... of every decision in the chunk, replaying the logged picks.

    Pinned candidates are allowed in no other slot, and a pinned slot allows its item alone.
    Where every decision has a slot at the position (the usual case), the decisions' rows are
    taken as views instead of copies.
    """
    allowed = chunk.valid & ~chunk.pinned
    novel = chunk.valid.copy()
    for position in range(int(chunk.slot.max(initial=-1)) + 1):
        at = np.flatnonzero(chunk.slot == position)
        rows = chunk.row[at]  # ascending: slots come in (decision, slot) order
        take = slice(None) if len(rows) == len(allowed) else rows
        kinds = chunk.layout[rows, position]
        chosen = chunk.chosen[at]
        here = allowed[take]
        pinned = np.flatnonzero(kinds == "p")
        if len(pinned):
            here = here.copy()
            here[pinned] = False
            here[pinned, chosen[pinned]] = True
        promotable, fresh, novel_here = chunk.promotable[take], chunk.fresh[take], novel[take]
        state = SlotState(
            at,
            rows,
            take,
            kinds,
            here,
            novel_here,
            fresh,
            promotable,
            slot_pools(kinds, here, fresh, novel_here, promotable),
        )
        yield state
        allowed[rows, chosen] = False
        novel[take] &= chunk.category[take] != chunk.category[rows, chosen][:, None]


class Target:
    """What replay evaluates: a probability for every logged slot (``probabilities``)."""

    spec: str = ""
    trains = False  # learns on the earlier part of the window before it is evaluated
    uses_exploration = True  # turns scores into slot pmfs with an exploration

    def probabilities(
        self,
        chunk: Chunk,
        revisions: Revisions,
        item_value: np.ndarray,
        fallback: Exploration,
    ) -> SlotProbabilities:
        raise NotImplementedError

    def learn(self, chunk: Chunk, revisions: Revisions) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the target holds (a VW workspace)."""


class PolicyTarget(Target):
    """A serving policy (``slatebandit.policies``), asked for its pmf over each decision's
    logged candidates, slot by slot."""

    def __init__(self, policy: Policy, spec: str | None = None) -> None:
        self.policy = policy
        self.spec = spec or policy.name
        self.uses_exploration = policy.uses_logged_exploration

    def probabilities(
        self,
        chunk: Chunk,
        revisions: Revisions,
        item_value: np.ndarray,
        fallback: Exploration,
    ) -> SlotProbabilities:
        p_target = np.zeros(len(chunk.slot))
        expected = np.zeros(len(chunk.slot))
        outside = np.zeros(len(chunk.slot))
        scores = chunk.shaped(self.policy.logged_scores(chunk, revisions))
        for state in walk_slots(chunk):
            pmf = self.pmf(chunk, state, scores, fallback)
            p_target[state.at] = pmf[np.arange(len(state.at)), chunk.chosen[state.at]]
            expected[state.at] = (pmf * item_value[state.take]).sum(axis=1)
            outside[state.at] = (pmf * ~state.logger_pool).sum(axis=1)  # np.where's sums
        return SlotProbabilities(np.minimum(p_target, 1.0), expected, outside)

    def pmf(
        self, chunk: Chunk, state: SlotState, scores: np.ndarray, fallback: Exploration
    ) -> np.ndarray:
        """The policy's pmfs for these slots, with each decision's logged exploration."""
        codes = chunk.exploration[state.rows]
        loggers = np.unique(codes)
        if len(loggers) == 1:  # one logger for every decision (the usual case): no copies
            return self._pmfs(
                state, scores, slice(None), chunk.explorations[loggers[0]] or fallback
            )
        pmf = np.zeros(state.allowed.shape)
        for code in loggers:
            group = codes == code
            pmf[group] = self._pmfs(state, scores, group, chunk.explorations[code] or fallback)
        return pmf

    def _pmfs(
        self, state: SlotState, scores: np.ndarray, rows: Any, exploration: Exploration
    ) -> np.ndarray:
        """``Policy.logged_pmfs`` for the slots ``rows`` selects (a mask, or every row)."""
        return self.policy.logged_pmfs(
            state.kinds[rows],
            state.allowed[rows],
            scores[state.take][rows],
            state.fresh[rows],
            state.novel[rows],
            exploration,
            state.promotable[rows],
        )


class Logged(Target):
    spec = "logged"
    uses_exploration = False

    def probabilities(self, chunk, revisions, item_value, fallback):  # type: ignore[no-untyped-def]
        return SlotProbabilities(
            chunk.p_log.copy(), item_value[chunk.row, chunk.chosen], np.zeros(len(chunk.slot))
        )


class Trained(PolicyTarget):
    """``vw:"ARGS"``: a new VW model, taught the earlier part of the window first."""

    trains = True

    def __init__(self, spec: str, scorer: VWScorer) -> None:
        super().__init__(VWPolicy(scorer, Exploration()), spec)
        self.scorer = scorer

    def learn(self, chunk: Chunk, revisions: Revisions) -> None:
        """Each logged slot as the learner would teach it (``bandit.slot_example``)."""
        for i in range(len(chunk.slot)):
            row, column = int(chunk.row[i]), int(chunk.chosen[i])
            features = chunk.action(revisions, row, column)
            self.scorer.learn(
                slot_example(
                    chunk.shared(row),
                    int(chunk.slot[i]),
                    features,
                    float(chunk.reward[i]),
                    float(chunk.p_log[i]),
                )
            )

    def close(self) -> None:
        self.scorer.finish()


class Pinned(PolicyTarget):
    """``vw@V``: model version V from the registry."""

    def __init__(self, scorer: VWScorer) -> None:
        super().__init__(VWPolicy(scorer, Exploration(), pinned=True))
        self.scorer = scorer

    def close(self) -> None:
        self.scorer.finish()


def parse_target(spec: str, engine: Engine) -> Target:
    """A target from its SPEC (see the module docstring); a bad SPEC names itself."""
    spec = spec.strip()
    if spec in ("random", "popular"):
        policy = Random() if spec == "random" else Popular(Exploration())
        return PolicyTarget(policy)
    if spec == "logged":
        return Logged()
    if spec.startswith("vw@"):
        try:
            version = int(spec[3:])
        except ValueError:
            raise InvalidInput(f"policy {spec!r}: expected vw@VERSION", field="policy") from None
        with engine.connect() as conn:
            return Pinned(load_version(conn, version, "policy", label=f"policy {spec!r}"))
    if spec.startswith("vw:"):
        args = spec[3:].strip().strip("\"'")
        try:
            return Trained(f"vw:{args}", VWScorer(args))
        except ConfigError as exc:
            raise InvalidInput(f"policy {spec!r}: {exc.message}", field="policy") from None
    raise InvalidInput(
        f'policy {spec!r}: expected random, popular, logged, vw@VERSION or vw:"VW ARGS"',
        field="policy",
    )
