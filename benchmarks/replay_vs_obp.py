"""Replay beside Open Bandit Pipeline (obp), on the same million rows, in one run.

    python -m benchmarks.replay_vs_obp --obp-python PYTHON [--tile 100] [--bootstrap 1000]
                                       [--campaign tests/data/obd/random] [--work DIR]

The Open Bandit Dataset sample in ``--campaign`` (10,000 rows of a uniform random logger) is
tiled ``--tile`` times into one CSV and imported with ``slatebandit import obd`` (each row a
decision of one slot; kept in ``--work`` for the next run). Then, one after the other, each
evaluates the uniform random policy with IPS, SNIPS and DR and a ``--bootstrap``-replicate
bootstrap interval:

- slatebandit: ``slatebandit replay --policy random --estimators ips,snips,dr``, the command
  an analyst runs, timed from start to exit (item means as DR's reward model, cross-fitted);
- obp 0.5.7: ``OffPolicyEvaluation.estimate_intervals`` with ``InverseProbabilityWeighting``,
  ``SelfNormalizedInverseProbabilityWeighting`` and ``DoublyRobust``, the target's
  (rows x 80 items x 3 positions) action distribution, and each item's mean click as the
  reward model; timed from start to exit, and the ``estimate_intervals`` call alone.

obp is a benchmark dependency only, in a virtualenv of its own (its pins clash with ours):

    python3 -m venv OBP && OBP/bin/pip install torch==2.13.0 numpy==1.26.4 pandas==2.2.3 \\
        scikit-learn scipy matplotlib seaborn tqdm pyyaml
    OBP/bin/pip install --no-deps --ignore-requires-python obp==0.5.7

Prints both, the ratio, and the estimates side by side; writes
``benchmarks/results/replay-vs-obp.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import machine
from slatebandit.logging import open_engine
from slatebandit.replay.obd import ITEM_CONTEXT, find_log, import_obd

RESULTS = Path(__file__).parent / "results" / "replay-vs-obp.json"
ESTIMATORS = ("ips", "snips", "dr")

# Run by obp's own interpreter: reads the tiled CSV, prints one JSON line.
OBP_SCRIPT = r"""
import json, sys, time
import numpy as np, pandas as pd
from obp.ope import (OffPolicyEvaluation, InverseProbabilityWeighting,
                     SelfNormalizedInverseProbabilityWeighting, DoublyRobust)
path, replicates = sys.argv[1], int(sys.argv[2])
log = pd.read_csv(path, usecols=["item_id", "position", "click", "propensity_score"])
n, actions, positions = len(log), 80, 3
action = log["item_id"].to_numpy()
feedback = {
    "n_rounds": n, "n_actions": actions, "action": action,
    "position": log["position"].to_numpy() - 1, "reward": log["click"].to_numpy(),
    "pscore": log["propensity_score"].to_numpy(), "context": np.zeros((n, 1)),
    "action_context": np.eye(actions),
}
item_means = np.bincount(action, weights=feedback["reward"], minlength=actions) / np.maximum(
    np.bincount(action, minlength=actions), 1)
target = np.full((n, actions, positions), 1.0 / actions)
rewards = np.broadcast_to(item_means[None, :, None], (n, actions, positions)).copy()
ope = OffPolicyEvaluation(bandit_feedback=feedback, ope_estimators=[
    InverseProbabilityWeighting(estimator_name="ips"),
    SelfNormalizedInverseProbabilityWeighting(estimator_name="snips"),
    DoublyRobust(estimator_name="dr")])
started = time.perf_counter()
intervals = ope.estimate_intervals(action_dist=target, estimated_rewards_by_reg_model=rewards,
                                   n_bootstrap_samples=replicates, random_state=0)
seconds = time.perf_counter() - started
print(json.dumps({"estimate_intervals_seconds": seconds, "estimates": {
    name: {"value": float(v["mean"]), "low": float(v["95.0% CI (lower)"]),
           "high": float(v["95.0% CI (upper)"])} for name, v in intervals.items()}}))
"""


def tile(campaign: Path, times: int, out: Path) -> Path:
    """The campaign's log repeated ``times`` times (one header), beside its item context."""
    out.mkdir(parents=True, exist_ok=True)
    log = find_log(campaign)
    opener = gzip.open if log.suffix == ".gz" else open
    with opener(log, "rt", encoding="utf-8") as handle:
        header, *rows = handle.read().splitlines()
    body = "\n".join(rows) + "\n"
    with (out / "all.csv").open("w", encoding="utf-8") as handle:
        handle.write(header + "\n")
        for _ in range(times):
            handle.write(body)
    (out / ITEM_CONTEXT).write_bytes((campaign / ITEM_CONTEXT).read_bytes())
    return out / "all.csv"


def run_slatebandit(url: str, replicates: int) -> dict[str, Any]:
    command = [
        *(sys.executable, "-m", "slatebandit.cli", "replay", "--db", url),
        *("--policy", "random", "--estimators", ",".join(ESTIMATORS)),
        *("--bootstrap", str(replicates), "--format", "json"),
    ]
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (policy,) = json.loads(done.stdout)["policies"]
    estimates = {
        e["estimator"]: {"value": e["value"], "low": e["ci_low"], "high": e["ci_high"]}
        for e in policy["estimates"]
    }
    return {"seconds": seconds, "estimates": estimates}


def run_obp(python: str, csv: Path, replicates: int) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run(
        [python, "-c", OBP_SCRIPT, str(csv), str(replicates)],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    return {"seconds": seconds, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--obp-python", required=True, help="the python of obp's virtualenv")
    parser.add_argument("--campaign", type=Path, default=Path("tests/data/obd/random"))
    parser.add_argument("--tile", type=int, default=100)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--work", type=Path, help="keep the tiled log and its import here")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        campaign = work / f"{args.campaign.name}-x{args.tile}"
        database = work / f"{campaign.name}.db"
        url = f"sqlite:///{database}"
        csv = campaign / "all.csv"
        if not database.exists():
            tile(args.campaign, args.tile, campaign)
            started = time.perf_counter()
            engine = open_engine(url)  # creates the schema
            imported = import_obd(engine, campaign)
            engine.dispose()
            print(
                f"imported {imported.decisions} rows in {time.perf_counter() - started:.0f} s",
                flush=True,
            )
        ours = run_slatebandit(url, args.bootstrap)
        print(f"slatebandit replay: {ours['seconds']:.1f} s", flush=True)
        theirs = run_obp(args.obp_python, csv, args.bootstrap)
        print(
            f"obp: {theirs['seconds']:.1f} s "
            f"(estimate_intervals {theirs['estimate_intervals_seconds']:.1f} s)",
            flush=True,
        )
        facts = machine(work)
    ratio = theirs["seconds"] / ours["seconds"]
    print(f"slatebandit is {ratio:.2f}x obp's speed (above 1: faster)")
    for name in ESTIMATORS:
        a, b = ours["estimates"][name], theirs["estimates"][name]
        print(
            f"  {name:6} slatebandit {a['value']:.6f} [{a['low']:.6f}, {a['high']:.6f}]   "
            f"obp {b['value']:.6f} [{b['low']:.6f}, {b['high']:.6f}]"
        )
    results = {
        "rows": 10_000 * args.tile,
        "bootstrap": args.bootstrap,
        "slatebandit": ours,
        "obp": theirs,
        "obp_seconds_over_slatebandit": ratio,
        "machine": facts,
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
