"""The Open Bandit Dataset through the command line: import, replay, and the known answer."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import func, select

from slatebandit.cli import main
from slatebandit.logging import open_engine
from slatebandit.logging.schema import decisions, items, rewards

DATA = Path(__file__).parent / "data" / "obd"  # trimmed sample, see its README
RANDOM_CTR = 38 / 10_000  # on-policy click rate of the uniform random logs


def _import(tmp_path: Path, campaign: str) -> str:
    url = f"sqlite:///{tmp_path / campaign}.db"
    assert main(["import", "obd", str(DATA / campaign), "--db", url]) == 0
    return url


def _replay(url: str, out: Path, *policies: str, extra: tuple[str, ...] = ()) -> dict:  # type: ignore[type-arg]
    args = ["replay", "--db", url, "--format", "json", "--out", str(out), "--seed", "1"]
    for policy in policies:
        args += ["--policy", policy]
    assert main([*args, *extra]) == 0
    return json.loads(out.read_text())


def _estimates(report: dict, policy: str) -> dict[str, dict]:  # type: ignore[type-arg]
    entry = next(p for p in report["policies"] if p["policy"] == policy)
    return {e["estimator"]: e for e in entry["estimates"]}


def test_random_policy_on_the_bts_logs_covers_the_random_logs_click_rate(tmp_path: Path) -> None:
    """The issue's acceptance check: evaluated on Thompson-sampling logs, the uniform random
    policy's interval contains what the random policy really earned in its own logs."""
    url = _import(tmp_path, "bts")
    report = _replay(url, tmp_path / "bts.json", "random", "logged")
    assert report["n_decisions"] == report["n_slots"] == 10_000
    random = _estimates(report, "random")
    for name in ("ips", "snips", "dr"):
        assert random[name]["ci_low"] <= RANDOM_CTR <= random[name]["ci_high"], random[name]
    assert random["ips"]["max_weight"] == pytest.approx((1 / 80) / 4.5e-05, rel=1e-3)
    logged = _estimates(report, "logged")
    assert logged["ips"]["value"] == pytest.approx(42 / 10_000)
    engine = open_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(items)).scalar_one() == 80
        assert conn.execute(select(func.count()).select_from(rewards)).scalar_one() == 42
    engine.dispose()


def test_random_policy_on_its_own_logs_is_its_click_rate_exactly(tmp_path: Path) -> None:
    url = _import(tmp_path, "random")
    report = _replay(url, tmp_path / "random.json", "random", extra=("--bootstrap", "0"))
    ips = _estimates(report, "random")["ips"]
    assert ips["value"] == pytest.approx(RANDOM_CTR, rel=1e-12)
    assert ips["max_weight"] == pytest.approx(1.0)
    assert ips["ci_low"] < RANDOM_CTR < ips["ci_high"]


def test_html_report_is_one_self_contained_file(tmp_path: Path) -> None:
    url = _import(tmp_path, "bts")
    out = tmp_path / "report.html"
    args = ["replay", "--db", url, "--policy", "random", "--policy", "popular"]
    assert main([*args, "--format", "html", "--out", str(out), "--bootstrap", "100"]) == 0
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page
    assert "10000 decisions, 10000 slots" in page
    assert "cannot be evaluated offline" in page
    assert "<script" not in page and 'href="http' not in page and "src=" not in page
    again = tmp_path / "again.html"
    assert main([*args, "--format", "html", "--out", str(again), "--bootstrap", "100"]) == 0
    assert again.read_text() == page


def test_a_bad_row_writes_nothing_and_a_second_import_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    campaign = tmp_path / "broken"
    campaign.mkdir()
    shutil.copy(DATA / "bts" / "item_context.csv", campaign)
    lines = gzip.decompress((DATA / "bts" / "all.csv.gz").read_bytes()).decode().splitlines()
    fields = lines[7001].split(",")
    fields[5] = "0"  # propensity_score of row 7000
    lines[7001] = ",".join(fields)
    (campaign / "men.csv").write_text("\n".join(lines) + "\n")
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert main(["import", "obd", str(campaign), "--db", url]) == 2
    assert "men.csv:7002: propensity_score 0.0 is not in (0, 1]" in capsys.readouterr().err
    engine = open_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(decisions)).scalar_one() == 0
    engine.dispose()
    bts = _import(tmp_path, "bts")
    assert main(["import", "obd", str(DATA / "bts"), "--db", bts]) == 2
    assert "already imported" in capsys.readouterr().err
    assert main(["import", "obd", str(tmp_path), "--db", bts]) == 2
    assert "no item_context.csv" in capsys.readouterr().err


@pytest.mark.postgres
def test_replay_on_postgresql_gives_the_same_report_as_on_sqlite(
    tmp_path: Path, pg_url: str
) -> None:
    sqlite_url = _import(tmp_path, "bts")
    assert main(["import", "obd", str(DATA / "bts"), "--db", pg_url]) == 0
    extra = ("--bootstrap", "200", "--until", "2020-01-01")
    on_sqlite = _replay(sqlite_url, tmp_path / "a.json", "random", "popular", extra=extra)
    on_pg = _replay(pg_url, tmp_path / "b.json", "random", "popular", extra=extra)
    assert on_pg == on_sqlite


def test_decision_ids_past_two_to_the_31_replay_the_same(tmp_path: Path) -> None:
    """Replay keys slots by (decision, item): ids past 2^31 must not overflow it."""
    from sqlalchemy import text

    url = _import(tmp_path, "bts")
    before = _replay(url, tmp_path / "a.json", "random", extra=("--until", "2020-01-01"))
    engine = open_engine(url)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        shift = {"shift": 2**31 + 5}
        for table, column in (
            ("rewards", "decision_id"),
            ("slots", "decision_id"),
            ("decisions", "id"),
        ):
            conn.execute(text(f"update {table} set {column} = {column} + :shift"), shift)
        conn.commit()
    engine.dispose()
    after = _replay(url, tmp_path / "b.json", "random", extra=("--until", "2020-01-01"))
    # Bootstrap replicates and reward-model folds hash the ids, so only the point values of the
    # estimators without a model are comparable.
    for name in ("ips", "snips", "cascade-ips"):
        assert (
            _estimates(after, "random")[name]["value"]
            == _estimates(before, "random")[name]["value"]
        )
    assert after["n_slots"] == before["n_slots"] == 10_000


def test_one_campaign_is_one_campaign_however_its_path_is_spelled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _import(tmp_path, "bts")
    monkeypatch.chdir(DATA / "bts")
    assert main(["import", "obd", ".", "--db", url]) == 2
    assert "already imported" in capsys.readouterr().err


def test_replay_vs_obp_tiles_a_campaign_into_one_importable_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from benchmarks.replay_vs_obp import tile

    campaign = Path(__file__).parent / "data" / "obd" / "random"
    csv = tile(campaign, 3, tmp_path / "random-x3")
    with gzip.open(campaign / "all.csv.gz", "rt", encoding="utf-8") as handle:
        header, *rows = handle.read().splitlines()
    tiled = csv.read_text(encoding="utf-8").splitlines()
    assert tiled[0] == header and tiled[1:] == rows * 3
    assert (csv.parent / "item_context.csv").read_bytes() == (
        campaign / "item_context.csv"
    ).read_bytes()
