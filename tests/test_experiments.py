"""A/B experiments: deterministic assignment, share changes that keep users, the report's
arithmetic, and the CLI (the HTTP surface: test_experiments_api.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from slatebandit.cli import main
from slatebandit.policies.experiments import (
    ANYTIME_HORIZON,
    BUCKETS,
    FREE,
    Arm,
    Experiment,
    arm_result,
    reallocate,
    report,
)
from slatebandit.stats import margin

ADMIN, SERVE, ANALYST = {"x-api-key": "root"}, {"x-api-key": "s"}, {"x-api-key": "a"}
USERS = [f"user-{i}" for i in range(4000)]


def _experiment(arms: tuple[Arm, ...], allocation: bytes) -> Experiment:
    return Experiment("t", "salt", arms, arms[0].name, allocation)


def _arms_of(experiment: Experiment) -> list[str | None]:
    return [getattr(experiment.arm_of(u), "name", None) for u in USERS]


def test_shares_become_bucket_counts_and_the_rest_stays_free() -> None:
    arms = (Arm("a", "popular", 0.333), Arm("b", "vw", 0.333), Arm("c", "random", 0.3))
    allocation = np.frombuffer(reallocate(arms), dtype=np.uint8)
    assert [int((allocation == i).sum()) for i in range(3)] == [3330, 3330, 3000]
    assert int((allocation == FREE).sum()) == BUCKETS - 9660
    thirds = (Arm("a", "popular", 1 / 3), Arm("b", "vw", 1 / 3), Arm("c", "random", 1 / 3))
    allocation = np.frombuffer(reallocate(thirds), dtype=np.uint8)
    assert sorted(int((allocation == i).sum()) for i in range(3)) == [3333, 3333, 3334]


def test_changing_shares_moves_only_the_users_an_arm_must_give_up() -> None:
    before = (Arm("control", "popular", 0.5), Arm("treatment", "vw", 0.5))
    after = (Arm("control", "popular", 0.7), Arm("treatment", "vw", 0.3))
    old = _experiment(before, reallocate(before))
    new = _experiment(after, reallocate(after, before, old.allocation))
    moved = list(zip(_arms_of(old), _arms_of(new), strict=True))
    assert all(b == "control" for a, b in moved if a == "control")  # nobody left control
    stayed = sum(1 for a, b in moved if a == b == "treatment")
    left = sum(1 for a, b in moved if a == "treatment" and b == "control")
    assert stayed / (stayed + left) == pytest.approx(0.6, abs=0.04)  # 0.3 of the 0.5 stay
    # Removing an arm frees its buckets; a new arm takes free ones only.
    third = (Arm("control", "popular", 0.7), Arm("content", "content", 0.3))
    newest = _experiment(third, reallocate(third, after, new.allocation))
    pairs = list(zip(_arms_of(new), _arms_of(newest), strict=True))
    assert all(b == "control" for a, b in pairs if a == "control")
    assert all(b == "content" for a, b in pairs if a == "treatment")


def test_assignment_depends_only_on_the_salt_and_the_user() -> None:
    arms = (Arm("a", "popular", 0.5), Arm("b", "vw", 0.5))
    one = _experiment(arms, reallocate(arms))
    assert _arms_of(one) == _arms_of(_experiment(arms, reallocate(arms)))
    other = Experiment("t", "pepper", arms, "a", one.allocation)
    differs = sum(a != b for a, b in zip(_arms_of(one), _arms_of(other), strict=True))
    assert 0.4 < differs / len(USERS) < 0.6  # a new salt reshuffles users
    assert abs(_arms_of(one).count("a") / len(USERS) - 0.5) < 0.03


def test_arm_ctr_interval_is_the_delta_method_over_slates() -> None:
    rng = np.random.default_rng(0)
    shown = np.full(500, 5)
    clicks = rng.binomial(5, 0.1, size=500)
    result = arm_result(
        "a",
        "vw",
        500,
        shown.sum(),
        clicks.sum(),
        float((shown**2).sum()),
        float((clicks**2).sum()),
        float((shown * clicks).sum()),
    )
    assert result.ctr == pytest.approx(clicks.sum() / shown.sum())
    # With equal slate sizes the ratio's SE is the SE of the mean clicks per slate over 5.
    expected = clicks.std(ddof=1) / math.sqrt(500) / 5
    assert result.se == pytest.approx(expected, rel=1e-9)
    arms = (Arm("a", "vw", 0.5), Arm("b", "popular", 0.5))
    worse = arm_result("b", "popular", 500, 2500, 100, 12500.0, 100 * 1.0, 500.0)
    body = report(_experiment(arms, reallocate(arms)), {"a": result, "b": worse})
    diff = body["arms"][1]["vs_control"]  # type: ignore[index]
    assert diff["difference"] == pytest.approx(worse.ctr - result.ctr)
    half = 1.959964 * math.sqrt(result.se**2 + worse.se**2)
    assert diff["high"] - diff["low"] == pytest.approx(2 * half)
    # the anytime interval holds the fixed-horizon one, both centred on the difference
    assert diff["anytime_low"] < diff["low"] <= diff["high"] < diff["anytime_high"]
    centre = diff["difference"]
    assert (diff["low"] + diff["high"]) / 2 == pytest.approx(centre)
    assert (diff["anytime_low"] + diff["anytime_high"]) / 2 == pytest.approx(centre)
    assert diff["significant"] and diff["anytime_significant"]  # CTR 0.04 against 0.1


@pytest.mark.parametrize("slates", [2, 100, 1_000, 5_000, 100_000])  # per arm
def test_the_anytime_interval_holds_the_fixed_one_at_every_sample_size(slates: int) -> None:
    arms = (Arm("a", "popular", 0.5), Arm("b", "vw", 0.5))
    experiment = _experiment(arms, reallocate(arms))
    rng = np.random.default_rng(slates)
    results = {}
    for name, p in (("a", 0.05), ("b", 0.06)):
        clicks = rng.binomial(5, p, size=slates).astype(float)
        results[name] = arm_result(
            name,
            "vw",
            slates,
            5.0 * slates,
            clicks.sum(),
            25.0 * slates,
            (clicks**2).sum(),
            5 * clicks.sum(),
        )
    diff = report(experiment, results)["arms"][1]["vs_control"]  # type: ignore[index]
    if diff["low"] is None:  # no clicks at all: no standard error, no interval of either kind
        assert diff["anytime_low"] is None and not diff["anytime_significant"]
        return
    assert diff["anytime_low"] < diff["low"] <= diff["high"] < diff["anytime_high"]
    fixed, anytime = diff["high"] - diff["low"], diff["anytime_high"] - diff["anytime_low"]
    assert (diff["anytime_low"] + diff["anytime_high"]) / 2 == pytest.approx(diff["difference"])
    # the ratio is the sequence's margin against 1.96 / sqrt(n), n = both arms' slates
    n = 2 * slates
    ratio = margin(n, t_opt=ANYTIME_HORIZON) * math.sqrt(n) / 1.959964
    assert anytime / fixed == pytest.approx(ratio, rel=1e-9) and ratio > 1
    if n == ANYTIME_HORIZON:  # tightest there: the price of looking at every sample size
        assert ratio == pytest.approx(1.55, abs=0.01)
    # significant at every look implies significant at one look, not the other way round
    assert not diff["anytime_significant"] or diff["significant"]


def test_a_report_without_the_control_arm_has_no_interval_of_either_kind() -> None:
    arms = (Arm("a", "popular", 0.5), Arm("b", "vw", 0.5))
    only = arm_result("b", "vw", 100, 500, 30, 2500.0, 40.0, 150.0)
    diff = report(_experiment(arms, reallocate(arms)), {"b": only})["arms"][1]["vs_control"]  # type: ignore[index]
    assert diff["low"] is diff["anytime_low"] is diff["anytime_high"] is None
    assert diff["significant"] is diff["anytime_significant"] is False


def test_the_cli_defines_reports_and_stops_experiments(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    arms = ["--arm", "control=popular:0.5", "--arm", "mix=blend:vw=0.5,content=0.5:0.5"]
    assert main(["experiments", "put", "ab", "--db", url, *arms]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [a["policy"] for a in shown["arms"]] == ["popular", "blend:vw=0.5,content=0.5"]
    assert main(["experiments", "report", "ab", "--db", url]) == 0
    assert [a["slates"] for a in json.loads(capsys.readouterr().out)["arms"]] == [0, 0]
    assert main(["experiments", "put", "ab2", "--db", url, *arms]) == 2  # one at a time
    assert "is running" in capsys.readouterr().err
    assert (
        main(["experiments", "put", "x", "--db", url, "--arm", "a=vw@9:0.5", "--arm", "b=vw:0.5"])
        == 2
    )
    assert "no model version 9" in capsys.readouterr().err
    assert main(["experiments", "stop", "ab", "--db", url]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "stopped"
    assert main(["experiments", "list", "--db", url]) == 0
    assert "ab (stopped)" in capsys.readouterr().out
