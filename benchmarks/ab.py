"""An A/B experiment and the promotion gate, measured with the simulator over HTTP.

    python -m benchmarks.ab [--requests 8000] [--window 1000] [--seed 3]

1. A real ``slatebandit serve`` on a free loopback port, with its embedded learner and the
   default gated promotion (every 10th decision held out; checkpoints every 10 s, each judged
   by the gate on the held-out decisions).
2. ``PUT /v1/experiments/vw-vs-popular``: control = ``popular`` (50%), treatment = ``vw`` (50%).
3. The storefront simulator (hidden click model) asks for ``--requests`` slates and posts
   every click as a reward; then ``GET /v1/experiments/vw-vs-popular/report`` and the gate's
   verdicts from ``GET /v1/models``.
4. With the server stopped: a deliberately worse model (trained on the same log with every
   reward inverted, held-out decisions excluded) is saved as a version and judged by the gate
   against the champion (``replay.gate.judge``, as ``slatebandit models gate V`` does).

5. Ground truth: the simulator knows every click probability, so for the champion and every
   other version the benchmark also computes the true per-slot value on the same held-out
   decisions (the estimand the gate's estimators target: each slot's pmf, given the logged
   slots above it, times the true click probabilities) and sets it beside the gate's verdict.

``--env NAME=VALUE`` passes further settings to the server (e.g. ``EXPLORATION=softmax``).

Figures go to stdout and benchmarks/results/ab.json (ab-margin-M.json with ``--gate-margin``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
from sqlalchemy import select

from benchmarks.learning_curve import serving
from slatebandit.bandit import (
    FEATURE_SPEC_VERSION,
    Exploration,
    SharedFeatures,
    VWScorer,
    slot_example,
)
from slatebandit.config import Settings
from slatebandit.logging import models, open_engine
from slatebandit.logging.learning import due_decisions, revision_snapshots, slot_reward
from slatebandit.logging.schema import decisions, items
from slatebandit.policies.learner import slot_features
from slatebandit.replay.gate import held_out_window, judge
from slatebandit.replay.log import read_chunks
from slatebandit.replay.targets import parse_target
from slatebandit.simulate import Simulation, Storefront, windows_of

RESULTS = Path(__file__).parent / "results" / "ab.json"
ADMIN = {"x-api-key": "bench-admin"}
EXPERIMENT = {
    "arms": [
        {"name": "control", "policy": "popular", "share": 0.5},
        {"name": "treatment", "policy": "vw", "share": 0.5},
    ]
}


def inverted_model(settings: Settings) -> int:
    """A version trained on every learnable decision with each reward inverted (1 - r)."""
    engine = open_engine(settings.database_url)
    scorer = VWScorer(settings.vw_args)
    last, examples = 0, 0
    with engine.connect() as conn:
        while due := due_decisions(conn, last, time.time(), 2000):
            revs = sorted({int(d.payload.candidate_revs[i]) for d in due for i in d.payload.chosen})
            snapshots = revision_snapshots(conn, revs)
            for decision in due:
                if decision.decision_id % settings.gate_holdout_every == 0:
                    continue  # held out, as the learner does
                shared = SharedFeatures.from_log(decision.payload.context)
                for slot, key, propensity in decision.slots:
                    reward = slot_reward(decision.rewards.get(key, []), "sum", 0.0)
                    features = slot_features(decision.payload, slot, snapshots)
                    scorer.learn(slot_example(shared, slot, features, 1.0 - reward, propensity))
                    examples += 1
            last = due[-1].decision_id
    with engine.begin() as conn:
        version = models.save_version(
            conn,
            parent=models.champion(conn),
            vw_args=scorer.args,
            feature_spec=FEATURE_SPEC_VERSION,
            examples=examples,
            learned_through=last,
            model=scorer.to_bytes(),
        )
    engine.dispose()
    return version


def true_values(settings: Settings, storefront: Storefront) -> dict[str, float]:
    """Each version's true per-slot value on the gate's window (held-out decisions the champion
    scored), from the simulator's click model; and the logged policy's ("logged")."""
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        champion = models.champion(conn)
        specs = ["logged"] + [f"vw@{v.version}" for v in models.list_versions(conn)]
        item_of = dict(conn.execute(select(items.c.key, items.c.item_id)).all())
        user_of = dict(conn.execute(select(decisions.c.id, decisions.c.user_id)).all())
    targets = [parse_target(spec, engine) for spec in specs]
    total, slots = dict.fromkeys(specs, 0.0), 0
    for chunk, revisions in read_chunks(engine, held_out_window(engine, settings, champion)):
        # value[d, c]: the click probability of candidate c at the top, before position bias
        value = np.zeros(chunk.keys.shape)
        for d, decision_id in enumerate(chunk.decision_ids.tolist()):
            user = int(user_of[decision_id].rsplit("-", 1)[1])
            for c, key in enumerate(chunk.keys[d].tolist()):
                if key >= 0:
                    item = item_of[key]
                    taste = storefront.tastes[user, storefront.category_of[item]]
                    value[d, c] = storefront.base * taste * storefront.appeal[item]
        bias = storefront.position_bias[chunk.slot]
        for spec, target in zip(specs, targets, strict=True):
            expected = target.probabilities(chunk, revisions, value, Exploration()).expected
            total[spec] += float(np.minimum(expected * bias, 0.9).sum())
        slots += len(chunk.slot)
    for target in targets:
        target.close()
    engine.dispose()
    return {spec: round(t / max(slots, 1), 5) for spec, t in total.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="an empty directory to keep the data in")
    parser.add_argument("--gate-margin", default="0.05", help="SLATEBANDIT_GATE_MARGIN")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE, a setting")
    args = parser.parse_args()

    overrides = {
        "REWARD_WAIT": "2",
        "CHECKPOINT_SECONDS": "10",
        "GATE_MIN_DECISIONS": "100",
        "GATE_MARGIN": args.gate_margin,
        **dict(pair.split("=", 1) for pair in args.env),
        "SEED": str(args.seed),
        "API_KEYS": "admin:bench-admin",
        "LOG_LEVEL": "warning",
    }
    result: dict[str, object] = {
        "requests": args.requests,
        "k": args.k,
        "seed": args.seed,
        "gate_margin": float(args.gate_margin),
        "env": args.env,
    }
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = str(args.keep or scratch)
        with (
            serving(overrides, data_dir) as base,
            httpx.Client(base_url=base, timeout=30, headers=ADMIN) as client,
        ):
            storefront = Storefront.generate(args.items, args.users, seed=args.seed)
            sim = Simulation(client, storefront, "vw", k=args.k, seed=args.seed)
            sim.upload_catalog()
            put = client.put("/v1/experiments/vw-vs-popular", json=EXPERIMENT)
            assert put.status_code == 201, put.text
            started = time.monotonic()
            for size in windows_of(args.requests, args.window):
                window = sim.run_window(size)
                print(f"window {window.index}: CTR {window.ctr:.4f} (both arms)", flush=True)
            result["seconds"] = round(time.monotonic() - started, 1)
            result["report"] = client.get("/v1/experiments/vw-vs-popular/report").json()
            listed = client.get("/v1/models").json()
            result["gate_during_run"] = [
                {k: v[k] for k in ("version", "champion", "promoted", "reason")}
                for v in listed["gate"]
            ]
            result["champion_at_end"] = listed["champion"]
        settings = Settings.from_env(
            {f"SLATEBANDIT_{k}": v for k, v in overrides.items()}, data_dir=Path(data_dir)
        )
        worse = inverted_model(settings)
        verdict = judge(open_engine(settings.database_url), settings, worse)
        result["worse_model"] = {
            "version": worse,
            **verdict.details(),
            "champion": verdict.champion,
        }
        result["true_value"] = true_values(settings, storefront)
    print(json.dumps(result, indent=2))
    suffix = "".join(f"-{pair.lower()}" for pair in args.env)
    if args.gate_margin != "0.05":
        suffix += f"-margin-{args.gate_margin}"
    out = RESULTS.with_name(f"ab{suffix}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
