"""The analyst's commands: ``replay``, ``import obd`` and ``train-embeddings``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from slatebandit.cli.common import add_db_options, settings_from
from slatebandit.errors import InvalidInput
from slatebandit.logging import open_engine
from slatebandit.logging.objective import METRICS

MAX_PROCESSES = 4  # replay's evaluation pass: more slices than this gain little


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    replay = sub.add_parser(
        "replay", help="estimate what policies would have earned, from the decision log"
    )
    add_db_options(replay)
    replay.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="SPEC",
        help='random | popular | logged | vw@VERSION | vw:"VW ARGS" (repeat to compare)',
    )
    replay.add_argument("--since", help="first decision time (ISO 8601, epoch seconds or 7d)")
    replay.add_argument("--until", help="end of the window (default: now minus the reward wait)")
    replay.add_argument(
        "--estimators",
        default="ips,snips,dm,dr,cascade-ips,cascade-dr",
        help="comma-separated; also clipped-ips, clipped-dr, ... (weights capped at --clip)",
    )
    replay.add_argument("--bootstrap", type=int, default=1000, help="replicates (0: Gaussian)")
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--clip", type=float, default=100.0, help="weight cap of clipped-*")
    replay.add_argument(
        "--metric",
        choices=METRICS,
        default="reward",
        help="what a slot earns: reward (SLATEBANDIT_OBJECTIVE's), clicks (a click reward), "
        "conversions (a purchase reward) or revenue (its rewards' money value)",
    )
    replay.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help='share of the window that vw:"ARGS" policies train on',
    )
    replay.add_argument(
        "--processes",
        type=int,
        default=min(os.cpu_count() or 1, MAX_PROCESSES),
        help="evaluate slices of the window in this many processes at once (default: the "
        f"cores, at most {MAX_PROCESSES})",
    )
    replay.add_argument("--format", choices=("table", "json", "html"), default="table")
    replay.add_argument("--out", type=Path, help="write the report here (default: stdout)")
    replay.set_defaults(run=_replay)

    importer = sub.add_parser("import", help="import logged bandit data").add_subparsers(
        required=True, metavar="SOURCE"
    )
    obd = importer.add_parser("obd", help="one campaign of the Open Bandit Dataset")
    add_db_options(obd)
    obd.add_argument("dir", type=Path, help="the campaign's log CSV and item_context.csv")
    obd.set_defaults(run=_import_obd)

    embeddings = sub.add_parser(
        "train-embeddings", help="learn collaborative item vectors from the interaction log"
    )
    add_db_options(embeddings)
    embeddings.add_argument("--method", choices=("svd", "als"), help="default: the setting")
    embeddings.set_defaults(run=_train_embeddings)


def _replay(args: argparse.Namespace) -> int:
    from slatebandit.replay import ReplayOptions, replay
    from slatebandit.replay.report import to_html, to_json, to_table

    settings = settings_from(args)
    options = ReplayOptions.parse(
        args.policy,
        [e.strip() for e in args.estimators.split(",") if e.strip()],
        args.since,
        args.until,
        args.metric,
        bootstrap=args.bootstrap,
        seed=args.seed,
        clip=args.clip,
        train_fraction=args.train_fraction,
    )
    engine = open_engine(settings.database_url)
    bars: dict[str, tqdm] = {}  # type: ignore[type-arg]

    def progress(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = tqdm(total=total, desc=phase, unit="decision", mininterval=0.5)
        bar.update(done - bar.n)

    try:
        if args.processes < 1:
            raise InvalidInput("--processes must be at least 1", field="processes")
        report = replay(engine, settings, options, progress, processes=args.processes)
    finally:
        for bar in bars.values():
            bar.close()
        engine.dispose()
    text = {"table": to_table, "json": to_json, "html": to_html}[args.format](report)
    if args.out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _train_embeddings(args: argparse.Namespace) -> int:
    import dataclasses

    from slatebandit.retrieval.embedding_job import train_embeddings

    settings = settings_from(args)
    if args.method:
        settings = dataclasses.replace(settings, embedding_method=args.method)
    engine = open_engine(settings.database_url)
    try:
        with tqdm(desc="interactions", unit="event", mininterval=0.5) as bar:

            def say(stage: str) -> None:
                bar.close()  # reading is over; the later stages are named, not counted
                print(f"slatebandit: {stage}", file=sys.stderr)

            trained = train_embeddings(engine, settings, bar.update, say)
    finally:
        engine.dispose()
    if trained is None:
        print("no weighted interactions in the log: nothing to learn from", file=sys.stderr)
        return 1
    print(
        f"embeddings version {trained.version}: {trained.items} items from "
        f"{trained.interactions} interactions in {trained.seconds:.1f} s "
        f"({settings.embedding_method}); serving processes swap it in within a poll"
    )
    return 0


def _import_obd(args: argparse.Namespace) -> int:
    from slatebandit.replay.obd import import_obd

    settings = settings_from(args)
    if not args.dir.is_dir():
        raise InvalidInput(f"{args.dir}: no such directory", field="dir")
    engine = open_engine(settings.database_url)
    try:
        done = import_obd(engine, args.dir)
    finally:
        engine.dispose()
    print(
        f"imported {done.campaign}: {done.items} items, {done.decisions} decisions, "
        f"{done.clicks} clicks into {settings.database_url}"
    )
    return 0
