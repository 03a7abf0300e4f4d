"""The loop learns, over HTTP, with the defaults: a real `slatebandit serve` with its embedded
learner and gated releases (guard, canary, watch), driven by the storefront simulator.

    python -m benchmarks.learning_curve [--requests 20000] [--window 2000] [--seed 3]
                                        [--promotion gated|always] [--drift-at N] [--tag NAME]
                                        [--keep DIR]

Only the reward wait (0) and the checkpoint cadence (every 5 s) are lowered, so a run of
minutes shows what hours would. Prints CTR per window beside:

- random (k random items) and popular (the k items clicked most so far), on the same traffic
  and click model, computed by the simulator without the server;
- the oracle (each shopper's k best items) and the layout's ceiling: the best CTR reachable
  with the explore and diverse slots where they are (``Storefront.layout_ceiling``);
- the share of the gap from random to the ceiling that the last window closes.

``--drift-at N`` draws every shopper's tastes anew after N visits and reports how many slates
it took to get back to 80% of the CTR before the change. Learning latency is measured from
the client's side: for every reward posted, the seconds until the first slate served by a
model version that learned its decision (canary slates count). The release verdicts of the
run come from ``GET /v1/models``. Writes ``benchmarks/results/learning-curve-TAG.{json,csv,png}``.
``--keep DIR`` serves from DIR and keeps its log, for ``benchmarks/model_check.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
from sqlalchemy import create_engine, select

from benchmarks.harness import free_port
from slatebandit.config import Settings
from slatebandit.logging.schema import decisions
from slatebandit.simulate import Simulation, Storefront, plot, windows_of

RESULTS = Path(__file__).parent / "results"


@contextlib.contextmanager
def serving(settings: dict[str, str], data_dir: str) -> Iterator[str]:
    """A real ``slatebandit serve`` on a free loopback port with ``SLATEBANDIT_<NAME>`` set from
    ``settings``; yields its base URL once /healthz answers, stops it with SIGINT after."""
    with serving_process(settings, data_dir) as (base, _):
        yield base


@contextlib.contextmanager
def serving_process(
    settings: dict[str, str], data_dir: str, extra: Sequence[str] = ()
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``serving``, with more command-line arguments (``extra``); yields the base URL and the
    server's process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLATEBANDIT_")}
    env.update({f"SLATEBANDIT_{name}": value for name, value in settings.items()})
    command = [sys.executable, "-m", "slatebandit.cli", "serve", "--port", str(port), *extra]
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
        yield base, server
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)


class Recording:
    """An httpx client that notes when each reward was posted and when each model version
    first served a slate: the two ends of learning latency."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.rewarded: dict[str, float] = {}  # event id -> first reward posted at
        self.first_served: dict[int, float] = {}  # model version -> first slate at

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.client.put(url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        response = self.client.post(url, **kwargs)
        now = time.time()
        if url == "/v1/rewards":
            self.rewarded.setdefault(kwargs["json"]["event_id"], now)
        elif url == "/v1/slates" and response.status_code == 200:
            self.first_served.setdefault(response.json()["model_version"], now)
        return response


def learning_latency(
    db_url: str, recording: Recording, versions: list[dict[str, Any]]
) -> dict[str, float | int | None]:
    """Seconds from each reward to the first slate served by a version that learned it."""
    engine = create_engine(db_url)
    with engine.connect() as conn:
        ids = dict(conn.execute(select(decisions.c.event_id, decisions.c.id)).all())
    engine.dispose()
    served = sorted(
        (v["learned_through"], recording.first_served[v["version"]])
        for v in versions
        if v["version"] in recording.first_served
    )
    latencies = []
    for event_id, posted in recording.rewarded.items():
        decision = ids.get(event_id)
        if decision is None:
            continue
        # The first slate of any version that learned this decision, served after the reward.
        firsts = [at for through, at in served if through >= decision and at >= posted]
        if firsts:
            latencies.append(min(firsts) - posted)
    if not latencies:
        return {"rewards": 0, "median": None, "p90": None}
    values = np.asarray(latencies)
    return {
        "rewards": len(latencies),
        "of": len(recording.rewarded),
        "median": round(float(np.median(values)), 2),
        "p90": round(float(np.quantile(values, 0.9)), 2),
        "min": round(float(values.min()), 2),
    }


def curve(client: Any, policy: str, args: argparse.Namespace, storefront: Storefront) -> Simulation:
    sim = Simulation(client, storefront, policy, k=args.k, seed=args.seed)
    if policy == "vw":
        sim.upload_catalog()
    done = 0
    for size in windows_of(args.requests, args.window):
        if args.drift_at and done == args.drift_at:
            sim.storefront = storefront.with_new_tastes(args.seed + 1)
        window = sim.run_window(size)
        done += size
        print(f"{policy:>8} window {window.index}: CTR {window.ctr:.4f}", flush=True)
    return sim


def recovery(ctrs: list[float], drift_window: int, window: int) -> dict[str, float | int | None]:
    """The CTR of the window before the change, and the slates after it until a window is
    back to 80% of that."""
    before = ctrs[drift_window - 1]
    for i in range(drift_window, len(ctrs)):
        if ctrs[i] >= 0.8 * before:
            return {
                "before": before,
                "after_first": ctrs[drift_window],
                "slates": (i - drift_window + 1) * window,
            }
    return {"before": before, "after_first": ctrs[drift_window], "slates": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--promotion", default="gated", choices=("gated", "always"))
    parser.add_argument("--drift-at", type=int, default=0, help="visits before tastes change")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE, more settings")
    parser.add_argument("--tag", default="", help="results file suffix (default: promotion)")
    parser.add_argument(
        "--keep",
        type=Path,
        help="serve from this data directory and keep it (for benchmarks/model_check.py)",
    )
    args = parser.parse_args()
    if args.drift_at and args.drift_at % args.window:
        parser.error("--drift-at must be a multiple of --window")

    settings = {
        "REWARD_WAIT": "0",
        "CHECKPOINT_SECONDS": "5",
        "SEED": str(args.seed),
        "LOG_LEVEL": "warning",  # no access log line per request
    }
    if args.promotion != "gated":
        settings["PROMOTION"] = args.promotion
    settings.update(dict(pair.split("=", 1) for pair in args.env))
    defaults = Settings.from_env({f"SLATEBANDIT_{k}": v for k, v in settings.items()})
    storefront = Storefront.generate(args.items, args.users, seed=args.seed)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            if any(args.keep.iterdir()):
                parser.error(f"--keep {args.keep}: not empty")
            data_dir = str(args.keep)
        else:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory())
        base = stack.enter_context(serving(settings, data_dir))
        with httpx.Client(base_url=base, timeout=30) as client:
            recording = Recording(client)
            curves = {"vw": curve(recording, "vw", args, storefront).windows}
            listed = client.get("/v1/models").json()
        seconds = time.monotonic() - started
        latency = learning_latency(
            f"sqlite:///{data_dir}/slatebandit.db", recording, listed["versions"]
        )
    for baseline in ("popular", "random"):
        curves[baseline] = curve(None, baseline, args, storefront).windows

    layout = (defaults.explore_slots, defaults.diverse_slots)
    stores = [storefront] + ([storefront.with_new_tastes(args.seed + 1)] if args.drift_at else [])
    last_store = stores[-1]
    random_ctr, oracle = last_store.random_ctr(args.k), last_store.oracle_ctr(args.k)
    ceiling = last_store.layout_ceiling(args.k, *layout)
    ceiling_eps = last_store.layout_ceiling(args.k, *layout, epsilon=defaults.epsilon)
    ctrs = [w.ctr for w in curves["vw"]]
    last = ctrs[-1]
    summary: dict[str, Any] = {
        "promotion": defaults.promotion,
        "requests": args.requests,
        "window": args.window,
        "seconds": round(seconds, 1),
        "vw": ctrs,
        "popular": [w.ctr for w in curves["popular"]],
        "random": [w.ctr for w in curves["random"]],
        "random_expected": random_ctr,
        "oracle": oracle,
        "layout_ceiling": ceiling,
        "layout_ceiling_with_epsilon": ceiling_eps,
        "last_vs_random": last / random_ctr,
        "gap_closed_to_ceiling": (last - random_ctr) / (ceiling - random_ctr),
        "gap_closed_to_oracle": (last - random_ctr) / (oracle - random_ctr),
        "learning_latency_seconds": latency,
        "champion": listed["champion"],
        "versions": len(listed["versions"]),
        "verdicts": [
            {
                k: v.get(k)
                for k in ("version", "champion", "stage", "outcome", "reason", "created_at")
            }
            for v in reversed(listed["gate"])
        ],
    }
    if args.drift_at:
        summary["drift"] = recovery(ctrs, args.drift_at // args.window, args.window)

    tag = args.tag or defaults.promotion
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"learning-curve-{tag}.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (RESULTS / f"learning-curve-{tag}.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["window", *curves])
        for i in range(len(curves["vw"])):
            out.writerow([i, *(f"{curves[name][i].ctr:.4f}" for name in curves)])
    plot(curves, RESULTS / f"learning-curve-{tag}.png")
    print(
        f"vw ({defaults.promotion}): first window {ctrs[0]:.4f}, last {last:.4f} = "
        f"{last / random_ctr:.2f}x random ({random_ctr:.4f}); oracle {oracle:.4f}, layout "
        f"ceiling {ceiling:.4f} ({ceiling_eps:.4f} with epsilon): last window closes "
        f"{summary['gap_closed_to_ceiling']:.0%} of the gap from random to the ceiling, "
        f"{summary['gap_closed_to_oracle']:.0%} to the oracle; popular last "
        f"{curves['popular'][-1].ctr:.4f}; learning latency {latency}; "
        f"{len(listed['versions'])} versions, champion {listed['champion']}; {seconds:.0f} s"
    )
    if args.drift_at:
        print(f"drift: {summary['drift']}")
    for verdict in summary["verdicts"]:
        print(
            f"  version {verdict['version']} {verdict['stage']} {verdict['outcome']}: "
            f"{verdict['reason'][:160]}"
        )


if __name__ == "__main__":
    main()
