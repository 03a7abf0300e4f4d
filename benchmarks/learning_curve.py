"""The loop learns, over HTTP: a real `slatebandit serve` with its embedded learner, driven by
the storefront simulator, against the random and popular baselines on the same traffic.

    python -m benchmarks.learning_curve [--requests 20000] [--window 2000] [--seed 3]

Starts a server on a free loopback port with SLATEBANDIT_REWARD_WAIT=0 and checkpoints every
5 s, runs the simulator's vw policy through it, then the two baselines (computed by the
simulator itself), and prints CTR per window. Writes benchmarks/results/learning-curve.{csv,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx2 as httpx

from slatebandit.simulate import Simulation, Storefront, plot, windows_of

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def curve(client: httpx.Client | None, policy: str, args: argparse.Namespace) -> Simulation:
    storefront = Storefront.generate(args.items, args.users, seed=args.seed)
    sim = Simulation(client, storefront, policy, k=args.k, seed=args.seed)
    if policy == "vw":
        sim.upload_catalog()
    for size in windows_of(args.requests, args.window):
        window = sim.run_window(size)
        print(f"{policy:>8} window {window.index}: CTR {window.ctr:.4f}", flush=True)
    return sim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    settings = {
        "REWARD_WAIT": "0",
        "CHECKPOINT_SECONDS": "5",
        "PROMOTION": "always",  # the learning itself, not the gate (benchmarks/ab.py)
        "SEED": str(args.seed),
        "LOG_LEVEL": "warning",  # no access log line per request
    }
    with tempfile.TemporaryDirectory() as data_dir, serving(settings, data_dir) as base:
        with httpx.Client(base_url=base, timeout=30) as client:
            curves = {"vw": curve(client, "vw", args).windows}
            served = client.get("/healthz").json()["model_version"]
    for baseline in ("popular", "random"):
        curves[baseline] = curve(None, baseline, args).windows

    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "learning-curve.csv").open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["window", *curves])
        for i in range(len(curves["vw"])):
            out.writerow([i, *(f"{curves[name][i].ctr:.4f}" for name in curves)])
    plot(curves, RESULTS / "learning-curve.png")
    first, last = curves["vw"][0].ctr, curves["vw"][-1].ctr
    popular = curves["popular"][-1].ctr
    print(
        f"vw: first window {first:.4f}, last {last:.4f} ({last / first - 1:+.0%}); "
        f"popular last {popular:.4f} ({last / popular - 1:+.0%}); "
        f"random last {curves['random'][-1].ctr:.4f}; model version at the end: {served}"
    )


if __name__ == "__main__":
    main()
