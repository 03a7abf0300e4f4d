"""The Personalizer-compatible API under Azure's own client, against a real `slatebandit serve`.

A simulated news site ranks 6 articles for 5 kinds of reader through ``PersonalizerClient``
(Personalizer's default learning policy, 20% exploration) and rewards clicks from a hidden
preference; the embedded learner learns as the server runs. Reported:

- the share of ranks that picked the reader's preferred article, per window: it should rise
  from chance (about 1/6) towards the best a 20%-exploring policy can do (0.8 + 0.2/6);
- rank latency (sequential, one connection) for 6 and for 50 actions, through the client, as
  plain JSON, and in process without HTTP or the commit;
- how long an offline evaluation of the whole log takes (online, baseline, random, one custom
  argument set and the policy optimization's three).

    python -m benchmarks.personalizer [--requests 6000] [--window 500]

Writes ``benchmarks/results/personalizer.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from azure.ai.personalizer import PersonalizerAdministrationClient, PersonalizerClient
from azure.core.credentials import AzureKeyCredential

from benchmarks.learning_curve import serving
from slatebandit.bandit import VWScorer
from slatebandit.personalizer.configuration import PolicyConfiguration, ServiceConfiguration
from slatebandit.personalizer.loops import Loop
from slatebandit.personalizer.requests import parse_rank

RESULTS = Path(__file__).parent / "results" / "personalizer.json"
TOPICS = ("sports", "politics", "food", "travel", "tech", "music")
READERS = [
    ("morning", "mobile"),
    ("evening", "desktop"),
    ("noon", "tablet"),
    ("night", "mobile"),
    ("morning", "desktop"),
]
PREFERRED = {reader: TOPICS[i % len(TOPICS)] for i, reader in enumerate(READERS)}
ACTIONS = [{"id": t, "features": [{"topic": t, "length": i % 3}]} for i, t in enumerate(TOPICS)]


def context(reader: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"time": reader[0]}, {"device": {"kind": reader[1]}}]


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def simulate(client: PersonalizerClient, args: argparse.Namespace) -> list[float]:
    rng = np.random.default_rng(args.seed)
    shares, hits = [], 0
    for i in range(1, args.requests + 1):
        reader = READERS[rng.integers(len(READERS))]
        ranked = client.rank({"contextFeatures": context(reader), "actions": ACTIONS})
        hit = ranked["rewardActionId"] == PREFERRED[reader]
        hits += hit
        if rng.random() < (0.8 if hit else 0.1):
            client.reward(ranked["eventId"], {"value": 1.0})
        if i % args.window == 0:
            shares.append(hits / args.window)
            print(f"ranks {i - args.window + 1}-{i}: preferred share {shares[-1]:.3f}", flush=True)
            hits = 0
    return shares


def latency(client: PersonalizerClient, base: str, actions: int, n: int) -> dict[str, Any]:
    """Rank latency through Azure's client, and as plain JSON over one httpx connection (the
    difference is the client's own pipeline)."""
    many = [{"id": f"a{i}", "features": [{"topic": TOPICS[i % 6], "n": i}]} for i in range(actions)]
    bodies = [
        {"contextFeatures": context(READERS[i % len(READERS)]), "actions": many} for i in range(n)
    ]
    through_client, plain = [], []
    with httpx.Client(base_url=base, headers={"Ocp-Apim-Subscription-Key": "sk"}) as http:
        for body in bodies:
            started = time.perf_counter()
            client.rank(body)
            through_client.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            http.post("/personalizer/rank", json=body).raise_for_status()
            plain.append((time.perf_counter() - started) * 1000)
    warm = n // 10
    return {"client": percentiles(through_client[warm:]), "plain_json": percentiles(plain[warm:])}


def in_process(actions: int, n: int) -> dict[str, float]:
    """Parsing, scoring and sampling one rank without HTTP or the commit, for comparison."""
    loop = Loop(
        "bench",
        ServiceConfiguration(),
        PolicyConfiguration(),
        VWScorer(PolicyConfiguration().vw_args),
        1,
        0.0,
    )
    many = [{"id": f"a{i}", "features": [{"topic": TOPICS[i % 6], "n": i}]} for i in range(actions)]
    rng, times = np.random.default_rng(0), []
    for i in range(n):
        body = {"contextFeatures": context(READERS[i % len(READERS)]), "actions": many}
        started = time.perf_counter()
        request = parse_rank(body, 500, multislot=False)
        event, _ = loop.rank(
            request.context, request.action_ids, request.action_features, request.slots, rng
        )
        event.to_bytes()
        times.append((time.perf_counter() - started) * 1000)
    return percentiles(times[n // 10 :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = {
        "API_KEYS": "serve:sk,admin:ak",
        "SEED": "1",
        "MODEL_POLL_SECONDS": "1",
        "PERSONALIZER_LOOPS": "default,latency",  # latency is measured on a loop of its own
    }
    with tempfile.TemporaryDirectory() as data_dir, serving(settings, data_dir) as base:
        client = PersonalizerClient(base, AzureKeyCredential("sk"))
        admin = PersonalizerAdministrationClient(base, AzureKeyCredential("ak"))
        config = admin.get_service_configuration()
        config.update(rewardWaitTime="PT2S", modelExportFrequency="PT5S")
        admin.update_service_configuration(config)
        started = time.monotonic()
        shares = simulate(client, args)
        seconds = time.monotonic() - started
        properties = admin.get_model_properties()
        loop = f"{base}/loops/latency"
        other = PersonalizerClient(loop, AzureKeyCredential("sk"))
        rank6, rank50 = latency(other, loop, 6, 2000), latency(other, loop, 50, 2000)
        rank6["in_process"], rank50["in_process"] = in_process(6, 2000), in_process(50, 2000)
        window = {
            "startTime": dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
            "endTime": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1),
        }
        contract = {
            "name": "bench",
            **window,
            "enablePolicyOptimization": True,
            "policies": [
                {"name": "fast", "arguments": "--cb_explore_adf -l 0.5 -q :: --cb_type mtr"}
            ],
        }
        began = time.monotonic()
        admin.create_evaluation("bench", contract)
        while True:  # the server answers at once for small logs; else it runs on, and we poll
            evaluation = admin.get_evaluation(
                "bench", start_time=window["startTime"], end_time=window["endTime"]
            )
            if evaluation["status"] != "Running":
                break
            time.sleep(1.0)
        evaluation_seconds = time.monotonic() - began
    results = {
        "requests": args.requests,
        "window": args.window,
        "preferred_share_by_window": shares,
        "best_possible_share": 0.8 + 0.2 / len(TOPICS),
        "simulation_seconds": seconds,
        "model": properties,
        "rank_latency_6_actions": rank6,
        "rank_latency_50_actions": rank50,
        "evaluation_status": evaluation["status"],
        "evaluation_seconds": evaluation_seconds,
        "evaluation": {
            p["name"]: p["summary"] for p in evaluation.get("content", {}).get("value", [])
        },
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "evaluation"}, indent=2))
    for name, summary in results["evaluation"].items():
        low, high = summary["confidenceInterval"]
        print(f"{name:>28}: {summary['expectedReward']:.4f} [{low:.4f}, {high:.4f}]")


if __name__ == "__main__":
    main()
