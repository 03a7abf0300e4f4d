"""Experiments as operators change them (HTTP and CLI alike) and as serving reads them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine

from slatebandit.errors import Conflict, InvalidInput, NotFound
from slatebandit.logging import experiments as store
from slatebandit.policies.experiments import (
    Arm,
    ArmResult,
    Experiment,
    arm_result,
    check_name,
    new_salt,
    parse_arms,
    reallocate,
    report,
)

log = logging.getLogger(__name__)


def _from_row(row: Any) -> Experiment:
    arms = tuple(Arm(a["name"], a["policy"], float(a["share"])) for a in row.arms)
    return Experiment(
        row.name,
        row.salt,
        arms,
        row.control,
        bytes(row.allocation),
        row.status,
        row.created_at,
        row.updated_at,
    )


def get_experiment(conn: Connection, name: str) -> Experiment:
    row = store.read_experiment(conn, name)
    if row is None:
        raise NotFound(f"name: no experiment {name!r}", field="name")
    return _from_row(row)


def list_experiments(conn: Connection) -> list[Experiment]:
    return [_from_row(row) for row in store.read_experiments(conn)]


def put_experiment(conn: Connection, name: str, body: dict[str, Any]) -> tuple[Experiment, bool]:
    """Create experiment ``name`` or change its arms; returns it and whether it is new.

    Refused (409) while another experiment runs, or if ``name`` was stopped: a stopped
    experiment's report stays as it was, so a new run needs a new name.
    """
    check_name(name, "name")
    extra = sorted(str(key) for key in body if key not in ("arms", "control"))
    if extra:
        raise InvalidInput(f"{extra[0]}: unknown field (expected arms and control)", field=extra[0])
    arms, control = parse_arms(body.get("arms"), body.get("control"))
    now = time.time()
    store.lock_experiments(conn)  # two workers cannot both start one
    for other in store.read_experiments(conn, status="running"):
        if other.name != name:
            raise Conflict(
                f"name: experiment {other.name!r} is running; stop it (DELETE) first: one "
                "experiment runs at a time",
                field="name",
            )
    row = store.read_experiment(conn, name, lock=True)
    arms_json = [arm.to_dict() for arm in arms]
    if row is None:
        allocation = reallocate(arms)
        store.insert_experiment(
            conn,
            name=name,
            salt=new_salt(),
            arms=arms_json,
            control=control,
            allocation=allocation,
            status="running",
            created_at=now,
            updated_at=now,
        )
        return get_experiment(conn, name), True
    old = _from_row(row)
    if old.status != "running":
        raise Conflict(f"name: experiment {name!r} was stopped; start a new one", field="name")
    before = {arm.name: arm.policy for arm in old.arms}
    for i, arm in enumerate(arms):
        if before.get(arm.name, arm.policy) != arm.policy:
            raise Conflict(
                f"arms[{i}].policy: arm {arm.name!r} serves {before[arm.name]!r}; an arm keeps "
                "its policy for the whole experiment (add a new arm instead)",
                field=f"arms[{i}].policy",
            )
    allocation = reallocate(arms, old.arms, old.allocation)
    store.update_experiment(
        conn, name, arms=arms_json, control=control, allocation=allocation, updated_at=now
    )
    return get_experiment(conn, name), False


def stop_experiment(conn: Connection, name: str) -> Experiment:
    """Stop assigning users; the experiment and its report stay readable."""
    experiment = get_experiment(conn, name)
    if experiment.status == "running":
        store.update_experiment(conn, name, status="stopped", updated_at=time.time())
    return get_experiment(conn, name)


def experiment_report(conn: Connection, name: str) -> dict[str, object]:
    experiment = get_experiment(conn, name)
    policy = {arm.name: arm.policy for arm in experiment.arms}
    results: dict[str, ArmResult] = {}
    for arm, slates, *sums in store.arm_sums(conn, name, experiment.created_at):
        if arm in policy:  # PostgreSQL sums bigints into Decimals: floats from here on
            n, c, nn, cc, nc = (float(x or 0) for x in sums)
            results[arm] = arm_result(arm, policy[arm], int(slates), n, c, nn, cc, nc)
    outcomes = store.arm_outcomes(conn, name, experiment.created_at)
    return {**report(experiment, results, outcomes), "status": experiment.status}


class ExperimentBook:
    """The running experiment, as one serving process knows it; ``refresh`` re-reads it.

    ``prepare(spec)`` is called for each arm's policy before the experiment is used (serving
    builds them there, off the request path: a ``vw@V`` arm loads its model).
    """

    def __init__(self, engine: Engine, prepare: Callable[[str], object] | None = None) -> None:
        self.engine = engine
        self.prepare = prepare
        self.running: Experiment | None = None

    def refresh(self) -> None:
        with self.engine.connect() as conn:
            rows = store.read_experiments(conn, status="running")
        running = _from_row(rows[-1]) if rows else None
        if running is not None and self.prepare is not None:
            for arm in running.arms:
                try:
                    self.prepare(arm.policy)
                except Exception:  # that arm's shoppers get the default policy meanwhile
                    log.exception("experiment %s: arm %s cannot load", running.name, arm.name)
        self.running = running

    def assign(self, user_id: str) -> tuple[str, Arm] | None:
        """The running experiment's name and the user's arm, or None (default policy)."""
        experiment = self.running  # one read: a refresh mid-request cannot mix experiments
        if experiment is None:
            return None
        arm = experiment.arm_of(user_id)
        return None if arm is None else (experiment.name, arm)
