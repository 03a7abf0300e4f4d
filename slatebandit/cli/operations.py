"""The operator's commands: ``models`` (registry, gate), ``experiments`` (A/B splits) and
``machines`` (the machines sharing a PostgreSQL database, and their spools)."""

from __future__ import annotations

import argparse
import json
import time

from slatebandit.cli.common import add_db_options, settings_from
from slatebandit.errors import InvalidInput
from slatebandit.logging import machines, models, open_engine


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("models", help="the model registry").add_subparsers(
        required=True, metavar="ACTION"
    )
    for name, help_text in (
        ("list", "list the model versions"),
        ("show", "show one version and the gate's verdicts on it"),
        ("promote", "make a version the champion (serving picks it up within a poll)"),
        ("rollback", "make the previous champion the champion again"),
        (
            "gate",
            "replay a version against the champion on held-out decisions; promote if no worse",
        ),
        ("gates", "every release verdict (guard, canary, watch, manual), newest first"),
    ):
        action = group.add_parser(name, help=help_text)
        add_db_options(action)
        if name in ("show", "promote", "gate"):
            action.add_argument("version", type=int)
        action.set_defaults(run=_models, action=name)

    group = sub.add_parser("experiments", help="A/B experiments").add_subparsers(
        required=True, metavar="ACTION"
    )
    for name, help_text in (
        ("list", "list the experiments"),
        ("show", "show one experiment"),
        ("put", "create an experiment or change its arms' shares"),
        ("stop", "stop assigning users (the report stays)"),
        ("report", "per arm: slates, clicks, CTR with a 95%% interval, difference to control"),
    ):
        action = group.add_parser(name, help=help_text)
        add_db_options(action)
        if name != "list":
            action.add_argument("name")
        if name == "put":
            action.add_argument(
                "--arm",
                action="append",
                required=True,
                metavar="NAME=POLICY:SHARE",
                help="e.g. control=popular:0.5 (repeat for each arm)",
            )
            action.add_argument("--control", help="the control arm (default: the first)")
        action.set_defaults(run=_experiments, action=name)

    group = sub.add_parser(
        "machines", help="the machines serving from this database, and their spools"
    ).add_subparsers(required=True, metavar="ACTION")
    for name, help_text in (
        ("list", "every machine: when it last reported, what its spool holds"),
        ("forget", "remove a machine that will not come back (its spool lost)"),
    ):
        action = group.add_parser(name, help=help_text)
        add_db_options(action)
        if name == "forget":
            action.add_argument("machine_id")
        action.set_defaults(run=_machines, action=name)


def _models(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    engine = open_engine(settings.database_url)
    if args.action == "gate":
        from slatebandit.replay.gate import judge

        with engine.connect() as conn:
            if models.get_version(conn, args.version) is None:
                raise InvalidInput(f"no model version {args.version}", field="version")
        verdict = judge(engine, settings, args.version)
        print(("promoted: " if verdict.promoted else "kept as challenger: ") + verdict.reason)
        engine.dispose()
        return 0
    with engine.begin() as conn:
        current = models.champion(conn)
        if args.action == "list":
            print("version  parent  examples  learned_through  created  agreement  champion")
            for v in models.list_versions(conn):
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.created_at))
                mark = "*" if v.version == current else ""
                agreement = f"{v.agreed / v.compared:.3f}" if v.compared else "-"
                print(
                    f"{v.version:>7}  {v.parent or '-':>6}  {v.examples:>8}  "
                    f"{v.learned_through:>15}  {created}  {agreement:>9}  {mark}"
                )
            return 0
        if args.action == "gates":
            for row in models.gate_verdicts(conn):
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(row["created_at"])))  # type: ignore[arg-type]
                print(
                    f"{created}  version {row['version']}  {row['stage']:>6}  "
                    f"{row['outcome'] or '-':>10}  {row['reason']}"
                )
            return 0
        if args.action == "rollback":
            target = models.previous_champion(conn)
            if target is None:
                raise InvalidInput("no earlier champion to roll back to", field="version")
            models.operator_release(conn, target, "rollback", f"rollback from {current} (CLI)")
            print(f"champion is now version {target} (was {current})")
            return 0
        info = models.get_version(conn, args.version)
        if info is None:
            raise InvalidInput(f"no model version {args.version}", field="version")
        if args.action == "show":
            shown = {
                **info.to_dict(),
                "champion": info.version == current,
                "gate": models.gate_verdicts(conn, info.version),
            }
            print(json.dumps(shown, indent=2))
        else:
            models.require_model(conn, info.version)  # a pruned version cannot serve
            models.operator_release(conn, info.version, "promote", "promoted by an operator (CLI)")
            print(f"champion is now version {info.version} (was {current})")
    engine.dispose()
    return 0


def parse_arm(text: str) -> dict[str, object]:
    """``NAME=POLICY:SHARE`` (the policy may itself hold ``:``, as ``blend:vw=0.5,...``)."""
    name, sep, rest = text.partition("=")
    policy, colon, share = rest.rpartition(":")
    if not sep or not colon:
        raise InvalidInput(f"--arm {text!r}: expected NAME=POLICY:SHARE", field="arm")
    try:
        value = float(share)
    except ValueError:
        raise InvalidInput(f"--arm {text!r}: the share must be a number", field="arm") from None
    return {"name": name.strip(), "policy": policy.strip(), "share": value}


def _experiments(args: argparse.Namespace) -> int:
    from slatebandit.policies import PolicySet, VWPolicy
    from slatebandit.policies.experiment_book import (
        experiment_report,
        get_experiment,
        list_experiments,
        put_experiment,
        stop_experiment,
    )

    settings = settings_from(args)
    engine = open_engine(settings.database_url)
    body: dict[str, object] = {}
    if args.action == "put":  # every arm's policy must load first (vw@V: that version exists)
        from slatebandit.bandit import Exploration, VWScorer

        arms = [parse_arm(text) for text in args.arm]
        policies = PolicySet(settings, engine, VWPolicy(VWScorer(settings.vw_args), Exploration()))
        for i, arm in enumerate(arms):
            policies.get(str(arm["policy"]), f"arms[{i}].policy")
        body = {"arms": arms, **({"control": args.control} if args.control else {})}
    with engine.begin() as conn:
        if args.action == "list":
            for experiment in list_experiments(conn):
                listed = ", ".join(f"{a.name}={a.policy}:{a.share:g}" for a in experiment.arms)
                print(f"{experiment.name} ({experiment.status}): {listed}")
        elif args.action == "put":
            print(json.dumps(put_experiment(conn, args.name, body)[0].to_dict(), indent=2))
        elif args.action == "show":
            print(json.dumps(get_experiment(conn, args.name).to_dict(), indent=2))
        elif args.action == "stop":
            print(json.dumps(stop_experiment(conn, args.name).to_dict(), indent=2))
        else:
            print(json.dumps(experiment_report(conn, args.name), indent=2))
    engine.dispose()
    return 0


def _machines(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    engine = open_engine(settings.database_url)
    if not machines.shared(engine.dialect.name):
        engine.dispose()
        if args.action == "forget":
            raise InvalidInput("SQLite is one machine's database: it keeps no registry")
        print("SQLite is one machine's database: it keeps no machine registry")
        return 0
    now = time.time()
    with engine.begin() as conn:
        if args.action == "forget":
            machines.forget(conn, args.machine_id, now)
            print(f"forgot machine {args.machine_id}: no reward waits for its spool any more")
        else:
            print("machine                           host              last report  spool")
            for m in machines.registered(conn, now):
                if m.stopped_at is not None:
                    spool = "stopped, empty"
                elif m.spooling_since is not None:
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.spooling_since))
                    spool = f"{m.spool_bytes:,} bytes since {since}"
                else:
                    spool = "empty"
                if m.may_hold:
                    spool += " (may hold records: unknown events' rewards are parked)"
                print(
                    f"{m.machine_id:32}  {m.hostname[:16]:16}  {now - m.seen_at:>9.1f} s  {spool}"
                )
    engine.dispose()
    return 0
