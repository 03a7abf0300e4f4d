"""The ``slatebandit`` command.

slatebandit serve [--demo]        run the HTTP API (uvicorn)
slatebandit items load FILE       upsert items from JSONL or CSV
slatebandit learn [--once]        run the learner as its own process
slatebandit simulate --url URL    a storefront with a hidden click model
slatebandit replay --policy SPEC  what policies would have earned, from the decision log
slatebandit import obd DIR        load an Open Bandit Dataset campaign into the decision log
slatebandit train-embeddings      learn collaborative item vectors from the interaction log
slatebandit models ...            list, show, promote, rollback, gate model versions
slatebandit experiments ...       A/B experiments: list, show, put, stop, report
slatebandit config [--markdown]   print the settings in force (or the README table)
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from slatebandit.cli import analysis, operations
from slatebandit.cli.common import add_db_options, settings_from
from slatebandit.config import LOOPBACK_HOSTS, Settings, settings_table
from slatebandit.errors import ConfigError, InvalidInput, SlatebanditError
from slatebandit.items import Item
from slatebandit.logging import count_live_items, load_items, open_engine

LEASE_RENEW_SECONDS = 5.0  # the learner works this long between lease renewals


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ConfigError as exc:
        print(f"slatebandit: configuration error: {exc.message}", file=sys.stderr)
        return 2
    except SlatebanditError as exc:  # bad input, unknown model version, ...
        print(f"slatebandit: {exc.message}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slatebandit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP API")
    add_db_options(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1)")
    serve.add_argument(
        "--demo", action="store_true", help="load a synthetic catalog if the catalog is empty"
    )
    serve.add_argument("--demo-items", type=int, default=10_000, help="size of the demo catalog")
    serve.set_defaults(run=_serve)

    items = sub.add_parser("items", help="manage the catalog").add_subparsers(
        required=True, metavar="ACTION"
    )
    load = items.add_parser("load", help="upsert items from a JSONL or CSV file")
    add_db_options(load)
    load.add_argument("file", type=Path)
    load.add_argument("--format", choices=("jsonl", "csv"), help="default: from the file extension")
    load.set_defaults(run=_items_load)

    learn = sub.add_parser("learn", help="run the learner (one at a time, by database lease)")
    add_db_options(learn)
    learn.add_argument("--once", action="store_true", help="learn what is due, checkpoint, exit")
    learn.set_defaults(run=_learn)

    simulate = sub.add_parser("simulate", help="a storefront with a hidden click model")
    simulate.add_argument("--url", default="http://127.0.0.1:8000", help="the server to drive")
    simulate.add_argument("--users", type=int, default=500)
    simulate.add_argument("--items", type=int, default=400, help="catalog the storefront uploads")
    simulate.add_argument("--requests", type=int, default=5000, help="slates to ask for")
    simulate.add_argument("--window", type=int, default=500, help="slates per CTR window")
    simulate.add_argument("--k", type=int, default=5)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--policy", choices=("vw", "random", "popular"), default="vw")
    simulate.add_argument(
        "--purchases", action="store_true", help="clicks may end in purchases at the item's price"
    )
    simulate.add_argument(
        "--placements", action="store_true", help="visits land on home, item, cart and category"
    )
    simulate.add_argument(
        "--rules", action="store_true", help="PUT a merchandiser's rules first (admin key)"
    )
    simulate.add_argument("--api-key", help="sent as X-API-Key")
    simulate.add_argument("--out", type=Path, default=Path("."), help="where the CSV and PNG go")
    simulate.set_defaults(run=_simulate)

    analysis.add_parsers(sub)

    operations.add_parsers(sub)

    config = sub.add_parser("config", help="print the settings in force")
    config.add_argument("--markdown", action="store_true", help="print the README's settings table")
    config.set_defaults(run=_config)
    return parser


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from slatebandit.recommender import index_path
    from slatebandit.retrieval import ItemStore
    from slatebandit.retrieval.demo import demo_items

    settings = settings_from(args)
    if not settings.keys and settings.host not in LOOPBACK_HOSTS:
        raise ConfigError(
            f"refusing to bind {settings.host} without API keys: set SLATEBANDIT_API_KEYS "
            "or bind 127.0.0.1",
            field="host",
        )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    engine = open_engine(settings.database_url)
    if args.demo:
        with engine.connect() as conn:
            empty = count_live_items(conn) == 0
        if empty:
            _say(f"loading the demo catalog ({args.demo_items:,} items)")
            load_items(engine, demo_items(args.demo_items), total=args.demo_items, desc="demo")
    if not ItemStore.index_is_current(engine, index_path(settings)):
        _say("building the catalog snapshot and item index once, for every worker to map")
        # Build the snapshot once, before the workers start, so that each of them maps the
        # same files (shared pages) instead of all building or loading their own. A child
        # process does it so that its memory goes back to the system rather than staying in
        # this supervisor.
        builder = multiprocessing.get_context("spawn").Process(
            target=_build_index, args=(settings,), name="slatebandit-index"
        )
        builder.start()
        builder.join()
        if builder.exitcode != 0:
            print("slatebandit: building the index failed", file=sys.stderr)
            return 1
    engine.dispose()
    os.environ.update(settings.as_env())
    # Each worker counts in its own file here and a scrape sums them (server/metrics.py); a
    # fresh directory per start, as prometheus_client requires.
    counted = settings.data_dir / "metrics"
    shutil.rmtree(counted, ignore_errors=True)
    counted.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(counted)
    base = f"http://{settings.host}:{settings.port}"
    _say(
        f"starting {settings.workers} worker(s); each maps the snapshot, loads the model, then "
        f"serves {base}/ (the console; {base}/metrics for Prometheus)"
    )
    uvicorn.run(
        "slatebandit.server.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=settings.access_log,
    )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import httpx2 as httpx

    from slatebandit.simulate import Simulation, Storefront, merchandiser_rules, plot, windows_of

    storefront = Storefront.generate(args.items, args.users, seed=args.seed)
    rules = merchandiser_rules(storefront) if args.rules else {}
    headers = {"x-api-key": args.api_key} if args.api_key else {}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"simulate-{args.policy}-seed{args.seed}"
    with httpx.Client(base_url=args.url, timeout=30) as client:
        sim = Simulation(
            client,
            storefront,
            args.policy,
            args.k,
            args.seed,
            headers,
            purchases=args.purchases,
            placements=args.placements,
            rules=rules,
        )
        if args.policy == "vw":
            sim.upload_catalog()
        with tqdm(total=args.requests, desc=f"simulate {args.policy}", unit="slate") as bar:
            for size in windows_of(args.requests, args.window):
                window = sim.run_window(size)
                bar.update(size)
                line = f"window {window.index}: CTR {window.ctr:.4f} ({window.clicks} clicks)"
                if args.purchases:
                    line += f", {window.purchases} purchases, {window.revenue_per_slate:.2f}/slate"
                bar.write(line)
    sim.write_csv(stem.with_suffix(".csv"))
    plot({args.policy: sim.windows}, stem.with_suffix(".png"))
    print(f"wrote {stem.with_suffix('.csv')} and {stem.with_suffix('.png')}")
    return 0


def _learn(args: argparse.Namespace) -> int:
    from slatebandit.learning import LearningLoop

    settings = settings_from(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(message)s")
    engine = open_engine(settings.database_url)
    holder = f"learn-{socket.gethostname()}-{os.getpid()}"
    loop = LearningLoop(
        engine,
        settings,
        holder,
        on_checkpoint=lambda learner, version: print(
            f"checkpoint {version} through decision {learner.position}", flush=True
        ),
    )
    budget = min(LEASE_RENEW_SECONDS, settings.learner_lease_seconds / 3)  # renew in time
    try:
        while True:
            held, taken = loop.turn(budget)
            if args.once and not held:
                print("slatebandit: another learner holds the lease", file=sys.stderr)
                return 1
            if args.once and taken == 0:
                loop.checkpoint()
                loop.personalizer.stop()
                loop.release.turn()  # the new checkpoint's release starts now
                return 0
            if not taken:
                time.sleep(1.0)  # nothing due yet: poll the log again
    except KeyboardInterrupt:
        loop.stop()
        return 0
    finally:
        engine.dispose()


def _say(what: str) -> None:
    """A step of a long start, on stderr beside uvicorn's own lines."""
    print(f"slatebandit: {what}", file=sys.stderr, flush=True)


def _build_index(settings: Settings) -> None:
    from slatebandit.recommender import index_path
    from slatebandit.retrieval import ItemStore
    from slatebandit.retrieval.embedding_job import latest_factors

    engine = open_engine(settings.database_url)
    ItemStore.build_snapshot(engine, index_path(settings), latest_factors(engine), progress=True)
    engine.dispose()


def _items_load(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    path: Path = args.file
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file", field="file")
    kind = args.format or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    # Validate the whole file first: a bad line anywhere writes nothing.
    total = sum(1 for _ in tqdm(_read_items(path, kind), desc="validate", unit="item"))
    engine = open_engine(settings.database_url)
    load_items(engine, _read_items(path, kind), total=total, desc="load")
    engine.dispose()
    print(f"loaded {total} items into {settings.database_url}")
    return 0


def _read_items(path: Path, kind: str) -> Iterator[Item]:
    with path.open(newline="", encoding="utf-8") as handle:
        if kind == "csv":
            rows: Iterator[tuple[int, Any]] = (
                (i + 2, _csv_item(r)) for i, r in enumerate(csv.DictReader(handle))
            )
        else:
            rows = (
                (i + 1, _json_line(line, i + 1)) for i, line in enumerate(handle) if line.strip()
            )
        from slatebandit.server.schemas import invalid  # the HTTP layer: only when loading

        for line, raw in rows:
            try:
                yield Item.model_validate(raw)
            except ValidationError as exc:
                error = invalid(exc)
                raise InvalidInput(f"{path}:{line}: {error.message}", field=error.field) from None


def _json_line(line: str, number: int) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise InvalidInput(f"line {number}: not valid JSON ({exc})", field="line") from None


def _csv_item(row: dict[str, str]) -> dict[str, Any]:
    """CSV columns: item_id, title, category, brand, price, available, attr.NAME per attribute."""
    item: dict[str, Any] = {"attributes": {}}
    for column, value in row.items():
        if column.startswith("attr."):
            if value != "":
                item["attributes"][column[5:]] = value
        elif column == "price":
            item["price"] = float(value) if value.strip() else None
        elif column == "available":
            item["available"] = value.strip().lower() not in ("0", "false", "no")
        elif column == "attributes":
            item["attributes"].update(json.loads(value) if value.strip() else {})
        else:
            item[column] = value
    return item


def _config(args: argparse.Namespace) -> int:
    if args.markdown:
        print(settings_table())
        return 0
    for name, value in sorted(Settings.from_env().as_env().items()):
        print(f"{name}={'***' if name.endswith('API_KEYS') and value else value}")
    return 0
