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

Figures go to stdout and benchmarks/results/ab.json (ab-margin-M.json with ``--gate-margin``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

from benchmarks.learning_curve import free_port
from slatebandit.bandit import FEATURE_SPEC_VERSION, SharedFeatures, VWScorer, slot_example
from slatebandit.config import Settings
from slatebandit.logging import models, open_engine
from slatebandit.logging.learning import due_decisions, revision_snapshots, slot_reward
from slatebandit.policies.learner import slot_features
from slatebandit.replay.gate import judge
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
    args = parser.parse_args()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLATEBANDIT_")}
    overrides = {
        "REWARD_WAIT": "2",
        "CHECKPOINT_SECONDS": "10",
        "GATE_MIN_DECISIONS": "100",
        "GATE_MARGIN": args.gate_margin,
        "SEED": str(args.seed),
        "API_KEYS": "admin:bench-admin",
        "LOG_LEVEL": "warning",
    }
    env.update({f"SLATEBANDIT_{name}": value for name, value in overrides.items()})
    result: dict[str, object] = {
        "requests": args.requests,
        "k": args.k,
        "seed": args.seed,
        "gate_margin": float(args.gate_margin),
    }
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = str(args.keep or scratch)
        command = [sys.executable, "-m", "slatebandit.cli", "serve", "--port", str(port)]
        server = subprocess.Popen([*command, "--data-dir", data_dir], env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.2)  # another process starting up: nothing to await
            with httpx.Client(base_url=base, timeout=30, headers=ADMIN) as client:
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
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=120)
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
    print(json.dumps(result, indent=2))
    out = (
        RESULTS
        if args.gate_margin == "0.05"
        else RESULTS.with_name(f"ab-margin-{args.gate_margin}.json")
    )
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
