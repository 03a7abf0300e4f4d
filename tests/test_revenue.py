"""Revenue: a reward's money ``value`` (live and through the spool), the learner's objective
(``SLATEBANDIT_OBJECTIVE``), replay's metrics, the A/B report's outcomes and
``GET /v1/metrics/summary``. Real app, real VW, real SQLite (and PostgreSQL for the summary's
SQL); every figure is checked against one computed by hand from a log whose clicks, purchases
and money are known."""

from __future__ import annotations

import json
import math
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import pytest
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from slatebandit.cli import main
from slatebandit.config import Settings
from slatebandit.errors import ConfigError, InvalidInput
from slatebandit.items import Item
from slatebandit.logging import open_engine
from slatebandit.logging.decisions import DecisionRecord, ShownSlot, insert_reward
from slatebandit.logging.objective import SlotReward, reward_rule
from slatebandit.logging.releases import slate_rewards
from slatebandit.logging.schema import rewards, spool_orphans
from slatebandit.logging.spool import SpooledReward, SpoolWriter
from slatebandit.policies.experiment_book import experiment_report, put_experiment
from slatebandit.policies.learner import Learner
from slatebandit.replay import ReplayOptions, replay
from slatebandit.replay.report import to_table
from slatebandit.retrieval.demo import demo_items
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog

Z = 1.959964
K = 3  # slots per slate in the served log
SLATES = 12
SCALE = 20.0  # the revenue scale the tests set


def _rewards_of(i: int) -> list[tuple[int, str, float | None]]:
    """The rewards of the i-th served slate as (slot, type, value): a click on slot 0 of every
    second slate, a purchase worth 10 (i + 1) on slot 1 of every third, an add-to-cart worth 5
    on slot 2 of every fourth (money, but no conversion)."""
    out: list[tuple[int, str, float | None]] = []
    if i % 2 == 0:
        out.append((0, "click", None))
    if i % 3 == 0:
        out.append((1, "purchase", 10.0 * (i + 1)))
    if i % 4 == 0:
        out.append((2, "add_to_cart", 5.0))
    return out


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[Item]]:
    """SLATES slates of K items served by a real app, rewarded as ``_rewards_of`` says."""
    tmp_path = tmp_path_factory.mktemp("revenue")
    settings = make_settings(tmp_path, learner="off", reward_wait=0, promotion="always")
    catalog = list(demo_items(120, seed=11))
    seed_catalog(settings.database_url, catalog)
    with TestClient(create_app(settings)) as client:
        for i in range(SLATES):
            slate = client.post("/v1/slates", json={"user_id": f"u{i}", "k": K}).json()
            assert [item["slot"] for item in slate["items"]] == list(range(K))
            for slot, kind, value in _rewards_of(i):
                body = {
                    "event_id": slate["event_id"],
                    "item_id": slate["items"][slot]["item_id"],
                    "type": kind,
                    **({} if value is None else {"value": value}),
                }
                assert client.post("/v1/rewards", json=body).status_code == 202
    return settings, catalog


def _with(settings: Settings, **changes: object) -> Settings:
    return Settings.from_env({}, **{**settings.__dict__, **changes})


def _rewards(url: str) -> list[tuple[str, float, float | None]]:
    engine = open_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(rewards.c.type, rewards.c.reward, rewards.c.value).order_by(rewards.c.id)
        ).all()
    engine.dispose()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def _count(url: str, table) -> int:  # type: ignore[no-untyped-def]
    engine = open_engine(url)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(table)).scalar_one()
    engine.dispose()
    return int(n)


# 1. The API takes a reward's value --------------------------------------------------------


def test_a_rewards_value_is_stored_beside_its_reward_and_answered(client, settings) -> None:  # type: ignore[no-untyped-def]
    slate = client.post("/v1/slates", json={"user_id": "buyer", "k": 3}).json()
    shown = {"event_id": slate["event_id"], "item_id": slate["items"][1]["item_id"]}
    bought = client.post("/v1/rewards", json={**shown, "type": "purchase", "value": 42.5})
    assert bought.status_code == 202
    assert bought.json()["value"] == 42.5 and bought.json()["reward"] == 1.0  # the table's
    whole = client.post("/v1/rewards", json={**shown, "type": "add_to_cart", "value": 40})
    assert whole.status_code == 202  # a whole number of money is a number too
    clicked = client.post("/v1/rewards", json={**shown, "reward": 0.5})
    assert clicked.status_code == 202 and clicked.json()["value"] is None
    assert _rewards(settings.database_url) == [
        ("purchase", 1.0, 42.5),
        ("add_to_cart", 1.0, 40.0),
        ("click", 0.5, None),
    ]


@pytest.mark.parametrize(
    ("value", "codec"),
    [(-0.01, "json"), ("12", "json"), (True, "json"), (1e16, "json"), (None, "nan"), (None, "inf")],
)
def test_a_bad_value_is_refused_naming_value_and_writes_nothing(
    client,  # type: ignore[no-untyped-def]
    settings,
    value: object,
    codec: str,
) -> None:
    slate = client.post("/v1/slates", json={"user_id": "buyer", "k": 3}).json()
    body = {"event_id": slate["event_id"], "item_id": slate["items"][0]["item_id"]}
    if codec == "json":
        answer = client.post("/v1/rewards", json={**body, "type": "purchase", "value": value})
    else:  # JSON cannot carry them; msgpack can
        packed = msgpack.packb({**body, "type": "purchase", "value": float(codec)})
        headers = {"content-type": "application/msgpack"}
        answer = client.post("/v1/rewards", content=packed, headers=headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["field"] == "value"
    assert answer.json()["error"]["message"].startswith("value:")
    assert _count(settings.database_url, rewards) == 0


def test_a_value_spooled_while_the_database_is_away_is_stored_when_shipped(
    tmp_path: Path, small_catalog: list[Item]
) -> None:
    """Through the spool, and through a reward parked until its decision ships from another
    spool (``spool_orphans``)."""
    settings = make_settings(tmp_path, db_probe_seconds=3600, learner="off")
    seed_catalog(settings.database_url, small_catalog)
    url = settings.database_url
    with TestClient(create_app(settings)) as client:
        s = client.app_state["recommender"]  # type: ignore[index]
        s.outage.failed()
        slate = client.post("/v1/slates", json={"user_id": "buyer", "k": 3}).json()
        bought = {
            "event_id": slate["event_id"],
            "item_id": slate["items"][0]["item_id"],
            "type": "purchase",
            "value": 19.99,
        }
        answer = client.post("/v1/rewards", json=bought)
        assert answer.status_code == 202 and answer.json()["logged"] == "spool"
        assert _count(url, rewards) == 0
        client.portal.call(s.watch)  # the database answers: ship
        assert _rewards(url) == [("purchase", 1.0, 19.99)]

        # A reward whose decision is still in another machine's spool waits for it, value kept.
        key = s.store.catalog.key_of[slate["items"][1]["item_id"]]
        parked = SpooledReward("d" * 32, key, "purchase", 1.0, 11.0, 7.25)
        client.portal.call(s.outage.spool.submit, parked)
        client.portal.call(s.watch)
        assert _count(url, spool_orphans) == 1
        other = SpoolWriter(s.outage.directory.parent / "elsewhere", max_bytes=1 << 30)
        client.portal.call(other.start)
        shown = (ShownSlot(0, key, 0.5, "exploit", "popular", 0.0),)
        decision = DecisionRecord("d" * 32, 10.0, "buyer", "vw", 0, b"\x80", shown)
        client.portal.call(other.submit, decision)
        client.portal.call(other.stop)
        s.outage.spool.directory = other.directory  # this worker now ships that spool
        client.portal.call(s.watch)
    assert _count(url, spool_orphans) == 0
    assert _rewards(url) == [("purchase", 1.0, 19.99), ("purchase", 1.0, 7.25)]


# 2. The objective: what the learner is taught, and what the release reads -----------------


def _taught(settings: Settings) -> dict[tuple[int, int], float]:
    """(slate, slot) -> the cost of the VW example the learner made of it (real VW learns it)."""
    engine = open_engine(settings.database_url)
    learner = Learner(engine, settings, holder="test")
    seen: list[list[str]] = []
    real = learner.scorer.learn

    def learn(example: list[str]) -> None:
        seen.append(example)
        real(example)

    learner.scorer.learn = learn  # type: ignore[method-assign]
    assert learner.run_due(now=time.time() + 3600) == SLATES
    engine.dispose()
    costs = [float(example[1].split()[0].split(":")[1]) for example in seen]
    return {(i // K, i % K): cost for i, cost in enumerate(costs)}


def test_clicks_teach_each_slots_reward_as_before(shop) -> None:  # type: ignore[no-untyped-def]
    settings, _ = shop
    expected = {(i, slot): 0.0 for i in range(SLATES) for slot in range(K)}
    for i in range(SLATES):
        for slot, _, _ in _rewards_of(i):
            expected[(i, slot)] = -1.0  # the reward table's 1 for each type
    assert _taught(settings) == expected


def test_revenue_teaches_each_slots_reward_plus_its_money_over_the_scale(shop) -> None:  # type: ignore[no-untyped-def]
    settings, _ = shop
    expected = {(i, slot): 0.0 for i in range(SLATES) for slot in range(K)}
    for i in range(SLATES):
        for slot, _, value in _rewards_of(i):
            expected[(i, slot)] = -(1.0 + (value or 0.0) / SCALE)  # a click has no money
    taught = _taught(_with(settings, objective="revenue", revenue_scale=SCALE))
    assert taught == pytest.approx(expected, abs=1e-12)
    assert taught[(0, 1)] == -1.5 and taught[(0, 0)] == -1.0


def test_the_revenue_scale_is_the_catalogs_median_price_unless_set(shop, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings, catalog = shop
    median = statistics.median(
        item.price for item in catalog if item.available and item.price and item.price > 0
    )
    revenue = _with(settings, objective="revenue")
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        assert reward_rule(conn, revenue) == SlotReward("reward+value", "sum", 0.0, median)
        assert reward_rule(conn, _with(revenue, revenue_scale=SCALE)).scale == SCALE
        assert reward_rule(conn, settings) == SlotReward("reward", "sum", 0.0, 1.0)
    engine.dispose()
    taught = _taught(revenue)
    assert taught[(3, 1)] == pytest.approx(-1 - 40.0 / median, rel=1e-5)  # VW keeps 6 digits
    empty = make_settings(tmp_path, objective="revenue")  # no item has a price: no scaling
    engine = open_engine(empty.database_url)
    with engine.connect() as conn:
        assert reward_rule(conn, empty).scale == 1.0
    engine.dispose()


def test_the_release_reads_each_slates_reward_under_the_objective(shop) -> None:  # type: ignore[no-untyped-def]
    """The canary's and the watch's per-slot reward of a slate: the objective's, averaged."""
    settings, _ = shop
    engine = open_engine(settings.database_url)
    with engine.connect() as conn:
        for objective, part in (
            ("clicks", lambda kind, value: 1.0),
            ("revenue", lambda kind, value: 1.0 + (value or 0.0) / SCALE),
        ):
            chosen = _with(settings, objective=objective, revenue_scale=SCALE)
            read, _ = slate_rewards(conn, 0, 4e9, 100, reward_rule(conn, chosen))
            expected = [sum(part(k, v) for _, k, v in _rewards_of(i)) / K for i in range(SLATES)]
            assert [r.reward for r in read] == pytest.approx(expected, abs=1e-12), objective
    engine.dispose()


# 3. Replay's metrics ------------------------------------------------------------------------

SLOTS = SLATES * K
CLICKS = sum(kind == "click" for i in range(SLATES) for _, kind, _ in _rewards_of(i))
PURCHASES = sum(kind == "purchase" for i in range(SLATES) for _, kind, _ in _rewards_of(i))
MONEY = sum(value or 0.0 for i in range(SLATES) for _, _, value in _rewards_of(i))
REWARDS = sum(len(_rewards_of(i)) for i in range(SLATES))


def _replay(settings: Settings, **options: object) -> dict:  # type: ignore[type-arg]
    engine = open_engine(settings.database_url)
    try:
        chosen = {"policies": ("logged",), "estimators": ("ips", "snips", "dr"), "until": 4e9}
        report = replay(engine, settings, ReplayOptions(**{**chosen, **options}))  # type: ignore[arg-type]
    finally:
        engine.dispose()
    return report.to_dict()


def _values(report: dict) -> dict[str, float]:  # type: ignore[type-arg]
    (policy,) = report["policies"]
    return {e["estimator"]: e["value"] for e in policy["estimates"]}


@pytest.mark.parametrize(
    ("metric", "objective", "expected", "meaning"),
    [
        ("clicks", "clicks", CLICKS / SLOTS, "clicks per slot"),
        ("conversions", "revenue", PURCHASES / SLOTS, "purchases per slot"),
        ("revenue", "clicks", MONEY / SLOTS, "revenue per slot"),
        ("reward", "clicks", REWARDS / SLOTS, "objective clicks"),
        ("reward", "revenue", (REWARDS + MONEY / SCALE) / SLOTS, f"value / {SCALE:g}"),
    ],
)
def test_the_logged_policy_replays_to_exactly_the_metric_the_log_holds(
    shop,  # type: ignore[no-untyped-def]
    metric: str,
    objective: str,
    expected: float,
    meaning: str,
) -> None:
    """The logging policy's weights are all 1: each estimator gives the log's own figure."""
    assert (CLICKS, PURCHASES, MONEY, REWARDS) == (6, 4, 235.0, 13)  # the log, counted by hand
    settings, _ = shop
    chosen = _with(settings, objective=objective, revenue_scale=SCALE)
    report = _replay(chosen, metric=metric, bootstrap=100)
    assert report["n_slots"] == SLOTS
    assert report["metric"] == metric and meaning in report["meaning"]
    for name, value in _values(report).items():
        assert value == pytest.approx(expected, rel=1e-12), name


def test_replay_metrics_over_the_cli_and_http_and_a_bad_metric(shop, capsys) -> None:  # type: ignore[no-untyped-def]
    settings, _ = shop
    argv = ["replay", "--data-dir", str(settings.data_dir), "--policy", "logged"]
    argv += ["--metric", "conversions", "--estimators", "ips", "--bootstrap", "0"]
    argv += ["--until", "4000000000", "--processes", "1", "--format", "json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "conversions"
    assert _values(report)["ips"] == pytest.approx(PURCHASES / SLOTS, rel=1e-12)
    assert main([*argv[:-1], "table"]) == 0
    assert "metric conversions: value = expected purchases per slot" in capsys.readouterr().out

    with TestClient(create_app(settings)) as client:
        body = {"policies": ["logged"], "estimators": ["ips", "dr"], "metric": "revenue"}
        body |= {"bootstrap": 0, "until": 4e9}
        started = client.post("/v1/evaluations", json=body)
        assert started.status_code == 202, started.text
        client.portal.call(client.app_state["recommender"].evaluations.wait)  # type: ignore[index]
        done = client.get(started.headers["location"]).json()
        bad = client.post("/v1/evaluations", json={**body, "metric": "profit"})
    assert done["status"] == "done", done
    assert done["result"]["metric"] == "revenue"
    for estimate in done["result"]["policies"][0]["estimates"]:
        assert estimate["value"] == pytest.approx(MONEY / SLOTS, rel=1e-12), estimate
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "metric"
    with pytest.raises(InvalidInput, match="metric must be one of") as refused:
        ReplayOptions(policies=("logged",), metric="profit").validate()
    assert refused.value.field == "metric"
    engine = open_engine(settings.database_url)
    options = ReplayOptions(policies=("logged",), bootstrap=0, until=4e9, metric="revenue")
    table = to_table(replay(engine, settings, options))
    engine.dispose()
    assert "metric revenue: value = expected revenue per slot" in table


def test_objective_and_revenue_scale_are_checked_at_start_by_name() -> None:
    for variable, value, field in (
        ("SLATEBANDIT_OBJECTIVE", "profit", "objective"),
        ("SLATEBANDIT_REVENUE_SCALE", "-1", "revenue_scale"),
        ("SLATEBANDIT_REVENUE_SCALE", "nan", "revenue_scale"),
    ):
        with pytest.raises(ConfigError, match=variable) as refused:
            Settings.from_env({variable: value})
        assert refused.value.field == field
    assert Settings.from_env({}).objective == "clicks"


# 4 and 5. What slates led to: the A/B report and the summary, on a hand-made log -------------


@dataclass(frozen=True)
class Slate:
    """A slate written straight to the log: who chose it, where it was shown, how many items,
    and its rewards as (slot, type, value)."""

    policy: str
    placement: str
    shown: int
    rewards: tuple[tuple[int, str, float | None], ...] = ()
    arm: str | None = None
    age: float = 0.0  # seconds before now


# The control arm "A" (policy vw) and the treatment "B" (popular); their figures by hand:
#   A: n = (2, 2, 2), clicks (1, 0, 1), purchases (1, 0, 0), revenue (30, 0, 0)
#      CTR 2/6, se 1/6; conversion 1/6, se 1/6; revenue per slate 10, se 10
#   B: n = (3, 3), clicks (1, 1), purchases (0, 1), revenue (5, 25)
#      CTR 2/6, se 0; conversion 1/6, se 1/6; revenue per slate 15, se 10
HAND = (
    Slate("vw", "home", 2, ((0, "click", None), (0, "purchase", 30.0)), arm="A"),
    Slate("vw", "home", 2, (), arm="A"),
    Slate("vw", "item", 2, ((1, "click", None),), arm="A"),
    Slate("popular", "cart", 3, ((0, "click", None), (2, "add_to_cart", 5.0)), arm="B"),
    Slate("popular", "home", 3, ((1, "click", None), (1, "purchase", 25.0)), arm="B"),
)
OLD = Slate("vw", "home", 2, ((0, "purchase", 999.0),), age=7200.0)  # outside an hour's window


def _write(engine: Engine, slates: tuple[Slate, ...], experiment: str | None = None) -> None:
    now = time.time()
    with engine.begin() as conn:
        for s in slates:
            shown = tuple(
                ShownSlot(j, j + 1, 0.5, "exploit", "popular", 0.0) for j in range(s.shown)
            )
            record = DecisionRecord(
                uuid.uuid4().hex,
                now - s.age,
                "shopper",
                s.policy,
                0,
                b"\x80",
                shown,
                experiment=experiment if s.arm else None,
                arm=s.arm,
                placement=s.placement,
            )
            (decision,) = DecisionRecord.write_many(conn, [record])
            for slot, kind, value in s.rewards:
                insert_reward(
                    conn,
                    decision_id=decision.decision_id,
                    item_key=slot + 1,
                    type=kind,
                    reward=1.0,
                    created_at=now,
                    value=value,
                )


def _interval(value: float, se: float, high: float = math.inf) -> dict[str, float | None]:
    return {"value": value, "low": max(0.0, value - Z * se), "high": min(high, value + Z * se)}


def _by_hand(slates: list[Slate]) -> dict[str, object]:
    """The figures straight from per-slate arrays: ratio and its delta-method standard error
    from the residuals, and the mean revenue with its sample standard deviation."""
    n = np.array([s.shown for s in slates], dtype=float)
    c = np.array([sum(k == "click" for _, k, _ in s.rewards) for s in slates], dtype=float)
    v = np.array([sum(k == "purchase" for _, k, _ in s.rewards) for s in slates], dtype=float)
    r = np.array([sum(x or 0.0 for _, _, x in s.rewards) for s in slates])
    count = len(slates)

    def ratio(top: np.ndarray) -> dict[str, float | None]:
        rate = top.sum() / n.sum()
        if count < 2:
            return {"value": rate, "low": None, "high": None}
        residual = top - rate * n
        se = math.sqrt(count / (count - 1) * float((residual**2).sum())) / n.sum()
        return _interval(rate, se, high=1.0)

    revenue: dict[str, float | None] = {"value": r.mean(), "low": None, "high": None}
    if count > 1:
        revenue = _interval(r.mean(), r.std(ddof=1) / math.sqrt(count))
    return {
        "slates": count,
        "shown": int(n.sum()),
        "clicks": int(c.sum()),
        "conversions": int(v.sum()),
        "revenue": float(r.sum()),
        "ctr": ratio(c),
        "conversion_rate": ratio(v),
        "revenue_per_slate": revenue,
    }


def _close(got: object, expected: object, at: str = "") -> None:
    """``got`` equals ``expected`` key by key, numbers to 1e-12 (None and counts exactly)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), (at, got, expected)
        for key, value in expected.items():
            _close(got[key], value, f"{at}.{key}")
    elif expected is None or isinstance(expected, int):
        assert got == expected and type(got) is type(expected), (at, got, expected)
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), (at, got, expected)


def test_the_ab_report_shows_each_arms_ctr_conversion_and_revenue_with_intervals(
    tmp_path: Path, small_catalog: list[Item]
) -> None:
    settings = make_settings(tmp_path, learner="off")
    seed_catalog(settings.database_url, small_catalog)
    engine = open_engine(settings.database_url)
    arms = [
        {"name": "A", "policy": "vw", "share": 0.5},
        {"name": "B", "policy": "popular", "share": 0.5},
    ]
    with engine.begin() as conn:
        put_experiment(conn, "ab", {"arms": arms})
    _write(engine, HAND, experiment="ab")
    _write(engine, (OLD, Slate("vw", "home", 2, ((0, "purchase", 50.0),))))  # in no experiment
    with engine.connect() as conn:
        report = experiment_report(conn, "ab")
    engine.dispose()
    outcomes = {arm["arm"]: arm["outcomes"] for arm in report["arms"]}  # type: ignore[attr-defined]
    _close(outcomes["A"], _by_hand([s for s in HAND if s.arm == "A"]))
    _close(outcomes["B"], _by_hand([s for s in HAND if s.arm == "B"]))
    # The same figures typed out (see HAND).
    a, b = outcomes["A"], outcomes["B"]
    assert (a["slates"], a["shown"], a["clicks"], a["conversions"], a["revenue"]) == (
        3,
        6,
        2,
        1,
        30.0,
    )
    assert a["ctr"] == pytest.approx(_interval(1 / 3, 1 / 6))
    assert a["conversion_rate"] == pytest.approx(
        {"value": 1 / 6, "low": 0.0, "high": 1 / 6 + Z / 6}
    )
    assert a["revenue_per_slate"] == pytest.approx({"value": 10.0, "low": 0.0, "high": 10 + 10 * Z})
    assert b["ctr"] == pytest.approx({"value": 1 / 3, "low": 1 / 3, "high": 1 / 3})  # se 0
    assert b["revenue_per_slate"] == pytest.approx(_interval(15.0, 10.0))
    # What the report showed before stays: a click there is any positive reward.
    clicks = {arm["arm"]: arm["clicks"] for arm in report["arms"]}  # type: ignore[attr-defined]
    assert clicks == {"A": 2, "B": 3}


def _summary(settings: Settings) -> None:
    engine = open_engine(settings.database_url)
    _write(engine, (*HAND, OLD))
    with TestClient(create_app(settings)) as client:
        answer = client.get("/v1/metrics/summary", params={"minutes": 60})
        assert answer.status_code == 200, answer.text
        summary = answer.json()
        _write(engine, (Slate("vw", "home", 1, ((0, "purchase", 1.0),)),))
        cached = client.get("/v1/metrics/summary", params={"minutes": 60}).json()
        day = client.get("/v1/metrics/summary", params={"minutes": 1440}).json()
        bad = [
            client.get("/v1/metrics/summary", params={"minutes": m}) for m in ("0", "x", "10081")
        ]
    engine.dispose()
    assert summary["minutes"] == 60
    _close(summary["overall"], _by_hand(list(HAND)))
    placements = {p.pop("placement"): p for p in summary["placements"]}
    assert [p["share"] for p in placements.values()] == pytest.approx([0.2, 0.6, 0.2])  # sorted
    for name, share in (("cart", 0.2), ("home", 0.6), ("item", 0.2)):
        _close(
            placements[name], {"share": share, **_by_hand([s for s in HAND if s.placement == name])}
        )
    assert placements["home"]["ctr"]["value"] == pytest.approx(2 / 7)
    assert placements["item"]["ctr"] == {"value": 0.5, "low": None, "high": None}  # one slate
    policies = {p.pop("policy"): p for p in summary["policies"]}
    for name in ("vw", "popular"):
        chosen = [s for s in HAND if s.policy == name]
        _close(policies[name], {"share": len(chosen) / len(HAND), **_by_hand(chosen)})
    # Read at most every 10 s per worker: the slate written since is not counted yet...
    assert cached["overall"] == summary["overall"]
    # ...while another window is read now, and an older slate comes in with a day's window.
    _close(day["overall"], _by_hand([*HAND, OLD, Slate("vw", "home", 1, ((0, "purchase", 1.0),))]))
    for answer in bad:
        assert answer.status_code == 400 and answer.json()["error"]["field"] == "minutes"


def test_the_summary_counts_what_slates_led_to_on_sqlite(
    tmp_path: Path, small_catalog: list[Item]
) -> None:
    settings = make_settings(tmp_path, learner="off")
    seed_catalog(settings.database_url, small_catalog)
    _summary(settings)


@pytest.mark.postgres
def test_the_summary_counts_what_slates_led_to_on_postgresql(
    tmp_path: Path, pg_url: str, small_catalog: list[Item]
) -> None:
    settings = make_settings(tmp_path, db_url=pg_url, learner="off")
    seed_catalog(pg_url, small_catalog)
    _summary(settings)
