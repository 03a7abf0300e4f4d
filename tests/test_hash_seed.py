"""A seeded run gives the same numbers whatever Python's string hash salt (PYTHONHASHSEED).

Python salts ``hash(str)`` per process, so iterating a set of strings visits them in another
order in every process. The scenario below (the full storefront simulator: placements,
purchases and a merchandiser's rules, learning between windows; then the embedding job's user
profiles and the model check's figures on the log) runs in two processes with different salts;
their outputs must be identical.

``python -m tests.test_hash_seed`` prints the scenario's output.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SEED = 3
VISIT_SECONDS = 7.2  # the simulator's clock: 500 visits an hour


def scenario() -> list[str]:
    """Every slate served, the learned model, the batch profiles and the model check, as
    lines."""
    # The server stamps events with time.time(), and a shopper's session vector decays by the
    # seconds between their events: on the wall clock the run would depend on the machine's
    # speed as well as on the salt. Every visit advances a simulated clock instead.
    clock = [1.8e9]
    time.time = lambda: clock[0]

    from sqlalchemy import select
    from starlette.testclient import TestClient

    from benchmarks.model_check import as_logged, check, load
    from slatebandit.logging import open_engine
    from slatebandit.logging.schema import user_profiles
    from slatebandit.policies.learner import Learner
    from slatebandit.retrieval.embedding_job import train_embeddings
    from slatebandit.server import create_app
    from slatebandit.simulate import Simulation, Storefront, merchandiser_rules
    from tests.conftest import make_settings

    out: list[str] = []

    class Recorded(Simulation):
        def _visit(self, window: Any) -> None:
            clock[0] += VISIT_SECONDS
            super()._visit(window)

        def _slate(
            self, user: int, context: dict[str, Any], placement: dict[str, Any]
        ) -> tuple[list[str], str | None]:
            shown, event_id = super()._slate(user, context, placement)
            out.append(f"slate {user} {placement['placement']} {' '.join(shown)}")
            return shown, event_id

    with tempfile.TemporaryDirectory() as work:
        settings = make_settings(
            Path(work),
            seed=SEED,
            learner="off",
            reward_wait=0,
            api_keys="admin:a",
            popular_refresh_seconds=1e9,
            catalog_poll_seconds=1e9,
        )
        admin = {"x-api-key": "a"}
        storefront = Storefront.generate(200, 60, seed=SEED)
        with TestClient(create_app(settings)) as client:
            sim = Recorded(
                client,
                storefront,
                "vw",
                k=5,
                seed=SEED,
                headers=admin,
                purchases=True,
                placements=True,
                rules=merchandiser_rules(storefront),
            )
            sim.upload_catalog()
            engine = open_engine(settings.database_url)
            learner = Learner(engine, settings, holder="test")
            together = client.app_state["recommender"].together  # type: ignore[index]
            for _ in range(2):
                sim.run_window(120)
                sim.learn(learner, together)  # between windows, not on a timer
            model = learner.scorer.to_bytes()
            out.append(f"model {hashlib.sha256(model).hexdigest()}")
            out.append(f"ctr {[w.ctr for w in sim.windows]}")
            train_embeddings(engine, settings)
            with engine.connect() as conn:  # in the order the job wrote them
                rows = conn.execute(select(user_profiles.c.user_id, user_profiles.c.features))
                out += [f"profile {user} {features.hex()}" for user, features in rows]
            engine.dispose()
        logged = load(settings.database_url, storefront)
        values, _ = storefront.values()
        figures = check(settings.vw_args, logged, len(logged) * 3 // 4, values, as_logged)
        out.append(f"check {figures['top1']!r} {figures['top3']!r}")
    return out


def _run(hash_seed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    env = {k: v for k, v in env.items() if not k.startswith("SLATEBANDIT_")}
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_hash_seed"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_a_seeded_run_does_not_depend_on_the_string_hash_salt() -> None:
    first, second = _run("1"), _run("2")
    assert any(line.startswith("profile ") for line in first)  # the embedding job ran
    assert first == second


if __name__ == "__main__":
    print("\n".join(scenario()))
