"""Rotation's memory and time: what a worker's ``Rotation`` holds per shopper once full, and what
``shift`` and ``shown`` cost a slate, for this checkout and, with ``--before REV``, for an older
revision's ``merchandising/rotation.py`` on the same seeded slates, taking turns in one run.

    python -m benchmarks.rotation [--shoppers 5000] [--slates 200000] [--before REV]

Each slate picks a shopper, 200 candidates from 20,000 items and shows the first ten; one in
seven follows a click on the first candidate. The shifts of every thousandth slate are compared
between the revisions: they must be equal. Memory is read with tracemalloc in a run of its own
(tracing slows every allocation), time without it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.harness import package_root
from slatebandit.merchandising import rotation as this_checkout

ITEMS, CANDIDATES, SHOWN = 20_000, 200, 10
START = 1_700_000_000.0  # a fixed clock: the fade is in steps, so a seeded run is exact


def older(revision: str, into: Path) -> ModuleType:
    """``merchandising/rotation.py`` as of ``revision``, loaded as a module of its own."""
    source = subprocess.run(
        ["git", "-C", package_root(), "show", f"{revision}:slatebandit/merchandising/rotation.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = into / "rotation_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("rotation_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drive(module: ModuleType, shoppers: int, slates: int) -> dict[str, Any]:
    """Serve ``slates`` seeded slates through one ``Rotation``; µs per slate and sampled shifts."""
    rotation = module.Rotation(rate=0.1, half_life=3600.0)
    rng = np.random.default_rng(7)
    users = [f"shopper-{i}" for i in range(shoppers)]
    now, shift_s, shown_s, sampled = START, 0.0, 0.0, []
    for n in range(slates):
        user = users[int(rng.integers(shoppers))]
        keys = rng.choice(ITEMS, CANDIDATES, replace=False).astype(np.int64)
        acted = {"click": {int(keys[0]): now - 5.0}} if n % 7 == 0 else {}
        started = time.perf_counter()
        shift = rotation.shift(user, keys, acted, now)
        shift_s += time.perf_counter() - started
        if n % 1000 == 0:
            sampled.append(None if shift is None else shift.tolist())
        shown = [int(k) for k in keys[:SHOWN]]
        started = time.perf_counter()
        rotation.shown(user, shown, acted, now)
        shown_s += time.perf_counter() - started
        now += 0.3
    return {
        "shift_us": shift_s / slates * 1e6,
        "shown_us": shown_s / slates * 1e6,
        "sampled": sampled,
        "rotation": rotation,
    }


def memory_per_shopper(module: ModuleType, shoppers: int, slates: int) -> float:
    gc.collect()
    tracemalloc.start()
    kept = drive(module, shoppers, slates)["rotation"]
    gc.collect()
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return held / len(kept._seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shoppers", type=int, default=5_000)
    parser.add_argument("--slates", type=int, default=200_000)
    parser.add_argument("--before", help="also measure this git revision's rotation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        modules = {"this checkout": this_checkout}
        if args.before:
            modules = {f"before ({args.before})": older(args.before, Path(scratch)), **modules}
        timed: dict[str, list[dict[str, Any]]] = {name: [] for name in modules}
        for _ in range(2):  # taking turns, so a slow minute of the box falls on each
            for name, module in modules.items():
                timed[name].append(drive(module, args.shoppers, args.slates))
        samples = {name: runs[0]["sampled"] for name, runs in timed.items()}
        same = len({repr(s) for s in samples.values()}) == 1
        print(f"{args.slates:,} slates over {args.shoppers:,} shoppers, {CANDIDATES} candidates")
        print("| rotation | shift us | shown us | a slate us | bytes a shopper |")
        print("|---|---:|---:|---:|---:|")
        for name, module in modules.items():
            shift = np.mean([run["shift_us"] for run in timed[name]])
            shown = np.mean([run["shown_us"] for run in timed[name]])
            held = memory_per_shopper(module, args.shoppers, args.slates)
            print(f"| {name} | {shift:.1f} | {shown:.1f} | {shift + shown:.1f} | {held:,.0f} |")
        if len(modules) > 1:
            print("the sampled shifts are", "equal" if same else "NOT equal")
            if not same:
                sys.exit(1)


if __name__ == "__main__":
    main()
