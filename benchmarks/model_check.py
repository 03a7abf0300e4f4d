"""How good is the scorer, in seconds instead of a learning curve's minutes.

    python -m benchmarks.learning_curve --keep DIR        # a run's log, kept
    python -m benchmarks.model_check --data-dir DIR [--train N] [--vw-args ARGS ...]
                                     [--oracle-profile] [--items 400] [--users 500] [--seed 3]

Teaches a fresh VW model the first ``--train`` decisions of a kept learning-curve log, each
shown slot as the learner teaches it (``bandit.slot_example`` on the logged features), then
scores every candidate of each later decision and asks the simulator's hidden click model what
the model's picks are worth. Per held-out decision:

- **top 1**: the true value of the model's best-scored candidate over the best candidate's;
- **top 3**: the same for the mean of its three best (a uniformly random candidate's top 1 is
  printed for scale);

and once, **retrieval**: the best candidate's value over the shopper's best item in the whole
catalog (what the candidate generators leave on the table).

The log is fixed, so this measures the model and its features, not the loop: one feature or
argument change is judged in about five seconds, on the same data, without the noise of a
run's checkpoint timing. ``--oracle-profile`` also runs each model with the shoppers' true
tastes as their profile (``tc=`` tokens valued by the simulator's taste), the bound a perfect
estimate of the shopper would reach with the same model.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, select

from slatebandit.bandit import SharedFeatures, VWScorer, slot_example
from slatebandit.config import Settings
from slatebandit.logging.records import DecisionPayload, unpack
from slatebandit.logging.schema import decisions, item_revisions, items, rewards, slots
from slatebandit.policies.learner import candidate_features
from slatebandit.simulate import Storefront
from slatebandit.simulate.storefront import CATEGORIES


@dataclass(frozen=True)
class LoggedDecision:
    """One logged decision, as the model check needs it."""

    decision_id: int
    shopper: int  # the simulator's shopper index
    shared: SharedFeatures
    actions: list[str]  # every candidate's features, as its scorer saw them
    catalog_index: np.ndarray  # each candidate's index in the storefront's items
    shown: list[tuple[int, int, float, float]]  # (slot, candidate, propensity, reward)


def load(database_url: str, storefront: Storefront) -> list[LoggedDecision]:
    engine = create_engine(database_url)
    position = {item.item_id: n for n, item in enumerate(storefront.items)}
    with engine.connect() as conn:
        item_of = dict(conn.execute(select(items.c.key, items.c.item_id)).all())
        snapshots = {
            rev: (key, unpack(snapshot))
            for rev, key, snapshot in conn.execute(
                select(item_revisions.c.rev, item_revisions.c.key, item_revisions.c.snapshot)
            )
        }
        clicked = {
            (decision_id, key)
            for decision_id, key in conn.execute(select(rewards.c.decision_id, rewards.c.item_key))
        }
        shown: dict[int, list[tuple[int, int, float]]] = {}
        for decision_id, slot, key, propensity in conn.execute(
            select(slots.c.decision_id, slots.c.slot, slots.c.item_key, slots.c.propensity)
        ):
            shown.setdefault(decision_id, []).append((slot, key, propensity))
        rows = conn.execute(
            select(decisions.c.id, decisions.c.user_id, decisions.c.payload).order_by(
                decisions.c.id
            )
        ).all()
    engine.dispose()
    logged = []
    for decision_id, user_id, data in rows:
        payload = DecisionPayload.decode(data)
        keys = [snapshots[int(rev)][0] for rev in payload.candidate_revs]
        logged.append(
            LoggedDecision(
                decision_id,
                int(user_id.removeprefix("shopper-")),
                SharedFeatures.from_log(payload.context),
                [candidate_features(payload, c, snapshots) for c in range(len(keys))],
                np.array([position[item_of[key]] for key in keys]),
                [
                    (slot, int(payload.chosen[slot]), p, float((decision_id, key) in clicked))
                    for slot, key, p in sorted(shown[decision_id])
                ],
            )
        )
    return logged


Profile = Callable[[LoggedDecision], SharedFeatures]


def as_logged(decision: LoggedDecision) -> SharedFeatures:
    return decision.shared


def oracle_profile(storefront: Storefront) -> Profile:
    """The shopper's true tastes in place of the ``tc=`` tokens their events gave them."""

    def shared(decision: LoggedDecision) -> SharedFeatures:
        tastes = storefront.tastes[decision.shopper]
        kept = tuple(t for t in decision.shared.profile if not t.startswith("tc="))
        true = tuple(f"tc={name}:{tastes[c]:.3f}" for c, name in enumerate(CATEGORIES))
        return replace(decision.shared, profile=kept + true)

    return shared


def check(
    vw_args: str, logged: list[LoggedDecision], train: int, values: np.ndarray, profile: Profile
) -> dict[str, float]:
    started = time.monotonic()
    scorer = VWScorer(vw_args)
    for decision in logged[:train]:
        shared = profile(decision)
        for slot, candidate, propensity, reward in decision.shown:
            scorer.learn(
                slot_example(shared, slot, decision.actions[candidate], reward, propensity)
            )
    top1, top3 = [], []
    for decision in logged[train:]:
        worth = values[decision.shopper, decision.catalog_index]
        order = np.argsort(-scorer.score(profile(decision), decision.actions))
        best = np.sort(worth)[::-1]
        top1.append(worth[order[0]] / best[0])
        top3.append(worth[order[:3]].mean() / best[:3].mean())
    scorer.finish()
    return {
        "top1": float(np.mean(top1)),
        "top3": float(np.mean(top3)),
        "seconds": time.monotonic() - started,
    }


def uniform_top1(held_out: list[LoggedDecision], values: np.ndarray) -> float:
    """Top 1 of a uniformly random pick among each decision's candidates, for scale."""
    return float(
        np.mean([(w := values[d.shopper, d.catalog_index]).mean() / w.max() for d in held_out])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="from learning_curve --keep")
    parser.add_argument("--train", type=int, help="decisions to learn (default: the first 3/4)")
    parser.add_argument(
        "--vw-args", action="append", help="a model to check (repeat; default: the default)"
    )
    parser.add_argument("--oracle-profile", action="store_true")
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    storefront = Storefront.generate(args.items, args.users, seed=args.seed)
    values, _ = storefront.values()
    logged = load(f"sqlite:///{args.data_dir / 'slatebandit.db'}", storefront)
    train = args.train or len(logged) * 3 // 4
    if not 0 < train < len(logged):
        parser.error(f"--train must be between 1 and {len(logged) - 1}")
    held_out = logged[train:]
    retrieval = np.mean(
        [values[d.shopper, d.catalog_index].max() / values[d.shopper].max() for d in held_out]
    )
    uniform = uniform_top1(held_out, values)
    print(
        f"{len(logged)} decisions: learning {train}, checking {len(held_out)}; "
        f"retrieval {retrieval:.3f} (best candidate over the shopper's best item); "
        f"a random candidate's top 1 {uniform:.3f}"
    )
    profiles: list[tuple[str, Profile]] = [("logged profile", as_logged)]
    if args.oracle_profile:
        profiles.append(("true tastes", oracle_profile(storefront)))
    for vw_args in args.vw_args or [Settings().vw_args]:
        for label, profile in profiles:
            result = check(vw_args, logged, train, values, profile)
            print(
                f"top 1 {result['top1']:.3f}  top 3 {result['top3']:.3f}  "
                f"({label}, {result['seconds']:.0f} s)  {vw_args}",
                flush=True,
            )


if __name__ == "__main__":
    main()
