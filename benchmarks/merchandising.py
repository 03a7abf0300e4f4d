"""The full storefront in the simulator: what rotation and the revenue objective do.

    python -m benchmarks.merchandising [--windows 10] [--window 500] [--seeds 2]
                                       [--settings "rotation on,revenue"] [--tag NAME]

Runs the storefront simulator (``slatebandit.simulate``) with purchases at prices, the four
placements and a merchandiser's rules (``merchandiser_rules``) against an app in this process
(real VW, hnswlib and SQLite), learning between windows and promoting each checkpoint, as
``tests/test_simulate.py`` does, and extending the bought-together counts between windows
rather than on a timer, so a run is deterministic for its seed. Three settings, each
on the same shoppers, catalog and visits:

    rotation off   SLATEBANDIT_ROTATION_RATE=0, objective clicks
    rotation on    the default rotation, objective clicks
    revenue        the default rotation, SLATEBANDIT_OBJECTIVE=revenue

Prints, per setting, the CTR, purchases per slate and revenue per slate over the last three
windows (the mean over ``--seeds`` seeds, and each seed's), and per placement. Writes
``benchmarks/results/merchandising[-TAG].json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient
from tqdm import tqdm

from slatebandit.config import Settings
from slatebandit.logging import open_engine
from slatebandit.policies.learner import Learner
from slatebandit.server import create_app
from slatebandit.simulate import Simulation, Storefront, Tally, merchandiser_rules

RESULTS = Path(__file__).parent / "results"
SETTINGS: dict[str, dict[str, Any]] = {
    "rotation off": {"rotation_rate": 0.0, "objective": "clicks"},
    "rotation on": {"objective": "clicks"},
    "revenue": {"objective": "revenue"},
}
ADMIN = {"x-api-key": "a"}


def run(name: str, seed: int, windows: int, size: int, work: Path) -> list[Tally]:
    settings = Settings.from_env(
        {},
        data_dir=work / f"{name.replace(' ', '-')}-{seed}",
        seed=seed,
        learner="off",
        reward_wait=0,
        api_keys="admin:a",
        # The background jobs' timing must not decide slates: the popular ranking stays fixed,
        # and the bought-together counts are extended between windows, not every second.
        popular_refresh_seconds=1e9,
        catalog_poll_seconds=1e9,
        **SETTINGS[name],
    )
    storefront = Storefront.generate(600, 400, seed=seed)
    with TestClient(create_app(settings)) as client:
        sim = Simulation(
            client,
            storefront,
            "vw",
            k=5,
            seed=seed,
            headers=ADMIN,
            purchases=True,
            placements=True,
            rules=merchandiser_rules(storefront),
        )
        sim.upload_catalog()
        engine = open_engine(settings.database_url)
        learner = Learner(engine, settings, holder="benchmark")
        together = client.app_state["recommender"].together  # type: ignore[index]
        for _ in tqdm(range(windows), desc=f"{name}, seed {seed}", unit="window"):
            sim.run_window(size)
            sim.learn(learner, together)
        engine.dispose()
    return list(sim.windows)


def summary(windows: list[Tally]) -> dict[str, Any]:
    """The last three windows, added up, overall and by placement."""
    last = windows[-3:]
    total = _add(last)
    by_placement: dict[str, list[Tally]] = {}
    for window in last:
        for placement, tally in window.placements.items():  # type: ignore[attr-defined]
            by_placement.setdefault(placement, []).append(tally)
    return {
        **total.to_dict(),
        "purchases_per_slate": round(total.purchases / max(total.slates, 1), 4),
        "placements": {name: _add(t).to_dict() for name, t in sorted(by_placement.items())},
    }


def _add(tallies: list[Tally]) -> Tally:
    total = Tally()
    for t in tallies:
        total.slates += t.slates
        total.impressions += t.impressions
        total.clicks += t.clicks
        total.purchases += t.purchases
        total.revenue += t.revenue
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.merchandising", description=__doc__)
    parser.add_argument("--windows", type=int, default=10)
    parser.add_argument("--window", type=int, default=500, help="slates per window")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--settings", default=",".join(SETTINGS), help="which of them (default: all three)"
    )
    parser.add_argument("--tag", default="", help="results/merchandising-TAG.json")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.settings.split(",")]
    if unknown := set(chosen) - set(SETTINGS):
        parser.error(f"--settings: unknown {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    results: dict[str, Any] = {"windows": args.windows, "window": args.window, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="slatebandit-merchandising-") as work:
        for name in chosen:
            runs = [
                summary(run(name, seed, args.windows, args.window, Path(work)))
                for seed in range(1, args.seeds + 1)
            ]
            mean = {
                key: round(sum(r[key] for r in runs) / len(runs), 5)
                for key in ("ctr", "purchases_per_slate", "revenue_per_slate")
            }
            results["settings"][name] = {**mean, "seeds": runs}
            print(name, json.dumps(mean), flush=True)
    RESULTS.mkdir(exist_ok=True)
    name = f"merchandising-{args.tag}.json" if args.tag else "merchandising.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
