"""Releases on a real SQLite log: guard -> canary -> verdict -> watch, each step recorded.

The decisions here are written straight into the log with the arms, versions and rewards a
canary would produce (seeded Bernoulli clicks), so the release's bookkeeping is tested apart
from serving: which slates count for which arm, that every turn reads only new decisions, and
that every canary ends in a verdict. Serving's side (who is assigned, what is logged) and the
whole loop against a real server are tested in ``test_canary_serving.py``.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, insert, select

from slatebandit.bandit import FEATURE_SPEC_VERSION, VWScorer
from slatebandit.config import Settings
from slatebandit.logging import models, open_engine
from slatebandit.logging import releases as store
from slatebandit.logging.schema import canaries, decisions, items, promotions, rewards, slots
from slatebandit.policies.canary import ARM
from slatebandit.replay.release import Release
from slatebandit.retrieval.demo import demo_items
from tests.conftest import make_settings, seed_catalog

K = 4
LATER = 3600.0  # every reward is in


@pytest.fixture
def world(tmp_path: Path) -> tuple[Settings, Engine]:
    settings = make_settings(tmp_path, learner="off", reward_wait=0, canary_slates=200)
    seed_catalog(settings.database_url, list(demo_items(50, seed=2)))
    engine = open_engine(settings.database_url)
    yield settings, engine
    engine.dispose()


def _version(engine: Engine, settings: Settings, learned_through: int = 0) -> int:
    scorer = VWScorer(settings.vw_args)  # a real (untrained) model: the guard loads it
    with engine.begin() as conn:
        return models.save_version(
            conn,
            parent=None,
            vw_args=scorer.args,
            feature_spec=FEATURE_SPEC_VERSION,
            examples=learned_through,
            learned_through=learned_through,
            model=scorer.to_bytes(),
        )


def _log(
    engine: Engine,
    n: int,
    version: int,
    arm: str | None,
    p_click: float,
    rng: np.random.Generator,
    experiment: str | None = None,
) -> None:
    """``n`` slates of ``K`` slots by ``version`` in ``arm``, each slot clicked with ``p_click``."""
    with engine.begin() as conn:
        keys = list(conn.execute(select(items.c.key).limit(K)).scalars())
        for _ in range(n):
            decision = conn.execute(
                insert(decisions)
                .values(
                    event_id=uuid.uuid4().hex,
                    created_at=time.time(),
                    user_id="u",
                    policy=f"vw@{version}" if arm else "vw",
                    model_version=version,
                    payload=b"-",  # the release never decodes it
                    experiment=experiment,
                    arm=arm,
                )
                .returning(decisions.c.id)
            ).scalar_one()
            for slot, key in enumerate(keys):
                conn.execute(
                    insert(slots).values(
                        decision_id=decision,
                        slot=slot,
                        item_key=key,
                        propensity=0.5,
                        kind="exploit",
                        source="popular",
                        score=0.0,
                    )
                )
                if rng.random() < p_click:
                    conn.execute(
                        insert(rewards).values(
                            decision_id=decision,
                            item_key=key,
                            type="click",
                            reward=1.0,
                            created_at=time.time(),
                        )
                    )


def _canary_started(engine: Engine, settings: Settings) -> tuple[int, int, store.Canary]:
    champion, challenger = _version(engine, settings, 10), _version(engine, settings, 100)
    with engine.begin() as conn:
        models.promote(conn, champion, reason="test: the champion")
    release = Release(engine, settings)
    release.turn(now=time.time() + LATER)  # guard: no held-out decisions, so a canary
    with engine.connect() as conn:
        canary = store.running_canary(conn)
        guard = models.gate_verdicts(conn, challenger)
    assert canary is not None and canary.version == challenger and canary.champion == champion
    assert [(v["stage"], v["outcome"]) for v in guard] == [("guard", "canary")]
    return champion, challenger, canary


def _turns(engine: Engine, settings: Settings) -> None:
    release = Release(engine, settings)
    for _ in range(5):
        release.turn(now=time.time() + LATER)


def test_the_first_version_meets_the_untrained_model_in_a_canary(
    world: tuple[Settings, Engine],
) -> None:
    settings, engine = world
    young = _version(engine, settings, 100)
    Release(engine, settings).turn()
    with engine.connect() as conn:  # too young: a canary waits for one that learned more
        assert store.running_canary(conn) is None and not models.gate_verdicts(conn, young)
    # As many decisions as the quickest verdict takes: 100 canary slates at a 10% share.
    version = _version(engine, settings, 1000)
    Release(engine, settings).turn()
    with engine.connect() as conn:
        canary = store.running_canary(conn)
        guard = models.gate_verdicts(conn, version)[0]
    assert canary is not None and (canary.version, canary.champion) == (version, 0)
    assert canary.share == 0.5  # the untrained model has no record to protect
    assert (guard["stage"], guard["outcome"], guard["promoted"]) == ("guard", "canary", False)
    rng = np.random.default_rng(4)
    _log(engine, 2000, 0, None, 0.2, rng)  # the untrained model serves everyone else
    _log(engine, 210, version, ARM, 0.2, rng)
    _turns(engine, settings)
    with engine.connect() as conn:
        assert models.champion(conn) == version
        ended = store.list_canaries(conn)[0]
    assert ended.status == "promoted" and ended.watch is None  # nothing to roll back to


def test_a_confidently_worse_canary_is_rejected_early(world: tuple[Settings, Engine]) -> None:
    settings, engine = world
    champion, challenger, canary = _canary_started(engine, settings)
    rng = np.random.default_rng(1)
    for _ in range(4):  # interleaved, as a 10% split would arrive
        _log(engine, 400, champion, None, 0.30, rng)
        _log(engine, 40, challenger, ARM, 0.05, rng)
    _turns(engine, settings)
    with engine.connect() as conn:
        assert models.champion(conn) == champion
        ended = store.list_canaries(conn)[0]
        verdict = models.gate_verdicts(conn, challenger)[0]
    assert ended.status == "rejected" and ended.watch is None
    assert (verdict["stage"], verdict["outcome"], verdict["promoted"]) == (
        "canary",
        "reject",
        False,
    )
    assert verdict["details"]["high"] < verdict["details"]["threshold"]
    assert ended.stats[ARM][0] < settings.canary_slates  # before the budget: confident early


def test_an_equal_canary_is_promoted_at_the_budget_and_watched(
    world: tuple[Settings, Engine],
) -> None:
    settings, engine = world
    champion, challenger, canary = _canary_started(engine, settings)
    rng = np.random.default_rng(2)
    _log(engine, 100, challenger, ARM, 0.2, rng)
    _log(engine, 1000, champion, None, 0.2, rng)
    _log(engine, 50, challenger, ARM, 0.2, rng, experiment="other")  # not the canary's
    _turns(engine, settings)
    with engine.connect() as conn:
        assert store.running_canary(conn) is not None  # 100 of 200 canary slates: no verdict
    _log(engine, 110, challenger, ARM, 0.2, rng)
    _turns(engine, settings)
    with engine.connect() as conn:
        assert models.champion(conn) == challenger
        ended = store.list_canaries(conn)[0]
        verdict = models.gate_verdicts(conn, challenger)[0]
    assert ended.status == "promoted" and ended.watch == "watching"
    assert ended.stats[ARM][0] == 210 and ended.stats["champion"][0] == 1000  # none twice
    assert (verdict["stage"], verdict["outcome"]) == ("canary", "promote")
    assert "budget" in verdict["reason"] or "no worse" in verdict["reason"]


def test_the_watch_rolls_back_a_champion_that_does_worse_live(
    world: tuple[Settings, Engine],
) -> None:
    settings, engine = world
    champion, challenger, canary = _canary_started(engine, settings)
    rng = np.random.default_rng(3)
    _log(engine, 250, challenger, ARM, 0.3, rng)
    _log(engine, 2000, champion, None, 0.3, rng)
    _turns(engine, settings)
    with engine.connect() as conn:
        assert models.champion(conn) == challenger
    _log(engine, 800, challenger, None, 0.05, rng)  # live, it does far worse
    _turns(engine, settings)
    recheck = _recheck_started(engine, champion, challenger)
    # Side by side, the version before it still does as well as it did: harm, not drift.
    _log(engine, 250, champion, ARM, 0.3, rng)
    _log(engine, 750, challenger, None, 0.05, rng)
    _turns(engine, settings)
    with engine.connect() as conn:
        assert models.champion(conn) == champion
        watched = store.list_canaries(conn)[1]
        ended = store.list_canaries(conn)[0]
        verdict = models.gate_verdicts(conn, challenger)[0]
        promotion = conn.execute(
            select(promotions.c.reason).order_by(promotions.c.id.desc())
        ).scalar()
    assert ended.id == recheck.id and ended.status == "promoted"
    assert watched.watch == "rolled_back"
    assert (verdict["stage"], verdict["outcome"]) == ("watch", "rollback")
    assert verdict["reason"].startswith(f"rolled back to {champion}")
    assert promotion == f"watch: rolled back from {challenger}"


def _recheck_started(engine: Engine, champion: int, challenger: int) -> store.Canary:
    """After a watch's alarm: the version before the champion serves beside it, recorded."""
    with engine.connect() as conn:
        assert models.champion(conn) == challenger  # not rolled back on the past alone
        recheck = store.running_canary(conn)
        watched = store.list_canaries(conn)[1]
        alarm = models.gate_verdicts(conn, challenger)[0]
    assert recheck is not None and recheck.watch == "recheck"
    assert (recheck.version, recheck.champion) == (champion, challenger)
    assert watched.watch == "rechecking"
    assert (alarm["stage"], alarm["outcome"]) == ("watch", "recheck")
    return recheck


def test_the_watch_keeps_a_champion_when_the_shoppers_changed(
    world: tuple[Settings, Engine],
) -> None:
    """Clicks fall for every version at once (the shoppers' tastes changed after the
    promotion): live is worse than the canary period, but side by side the version before it
    does no better, so nothing is rolled back."""
    settings, engine = world
    champion, challenger, canary = _canary_started(engine, settings)
    rng = np.random.default_rng(5)
    _log(engine, 250, challenger, ARM, 0.3, rng)
    _log(engine, 2000, champion, None, 0.3, rng)
    _turns(engine, settings)
    _log(engine, 800, challenger, None, 0.05, rng)  # everything does worse now
    _turns(engine, settings)
    recheck = _recheck_started(engine, champion, challenger)
    _log(engine, 250, champion, ARM, 0.05, rng)
    _log(engine, 750, challenger, None, 0.05, rng)
    _turns(engine, settings)
    with engine.connect() as conn:
        assert models.champion(conn) == challenger
        ended = store.list_canaries(conn)[0]
        watched = store.list_canaries(conn)[1]
        verdict = models.gate_verdicts(conn, challenger)[0]
    assert ended.id == recheck.id and ended.status == "rejected"
    assert watched.watch == "kept"
    assert (verdict["stage"], verdict["outcome"]) == ("watch", "keep")
    assert verdict["reason"].startswith("kept: ")


def test_a_canary_waits_for_a_version_that_learned_enough_since_the_champion(
    world: tuple[Settings, Engine],
) -> None:
    settings, engine = world
    # Early on, twice the champion's decisions; later, the quickest verdict's worth: 50 canary
    # slates at the default share of 0.25, 200 decisions.
    for learned, not_yet, enough in ((100, 150, 200), (1000, 1199, 1200)):
        champion = _version(engine, settings, learned)
        with engine.begin() as conn:
            models.promote(conn, champion, reason="test: the champion")
            conn.execute(canaries.delete())
        waiting = _version(engine, settings, not_yet)
        Release(engine, settings).turn(now=time.time() + LATER)
        with engine.connect() as conn:
            assert store.running_canary(conn) is None and not models.gate_verdicts(conn, waiting)
        newest = _version(engine, settings, enough)
        Release(engine, settings).turn(now=time.time() + LATER)
        with engine.connect() as conn:
            canary = store.running_canary(conn)
        assert canary is not None and (canary.version, canary.champion) == (newest, champion)


def test_a_canary_whose_champion_changes_is_superseded(world: tuple[Settings, Engine]) -> None:
    settings, engine = world
    champion, challenger, canary = _canary_started(engine, settings)
    other = _version(engine, settings)
    with engine.begin() as conn:
        models.operator_release(conn, other, "promote", "test: an operator")
    Release(engine, settings).turn(now=time.time() + LATER)
    with engine.connect() as conn:
        ended = store.list_canaries(conn)
        verdicts = models.gate_verdicts(conn)
    assert ended[0].status == "superseded"
    assert (verdicts[0]["stage"], verdicts[0]["outcome"]) == ("canary", "superseded")
    assert (verdicts[1]["stage"], verdicts[1]["outcome"]) == ("manual", "promote")


@pytest.mark.parametrize("promotion", ["always", "manual"])
def test_releases_do_nothing_unless_promotion_is_gated(
    world: tuple[Settings, Engine], promotion: str
) -> None:
    settings, engine = world
    settings = Settings(**{**settings.__dict__, "promotion": promotion})
    _version(engine, settings)
    Release(engine, settings).turn()
    with engine.connect() as conn:
        assert models.champion(conn) is None and not models.gate_verdicts(conn)


def test_serving_forgets_the_model_of_a_canary_that_ended(world: tuple[Settings, Engine]) -> None:
    """Each canary loads a model in every worker; an ended one's is dropped, or a worker would
    grow by a model per canary (the soak saw it)."""
    from slatebandit.policies import PolicySet, VWPolicy
    from slatebandit.policies.canary import CanaryBook

    settings, engine = world
    champion, challenger, canary = _canary_started(engine, settings)
    policies = PolicySet(settings, engine, VWPolicy(VWScorer(settings.vw_args), *_layout()))
    book = CanaryBook(engine, prepare=policies.get, forget=policies.forget)
    book.refresh()
    spec = f"vw@{challenger}"
    assert book.running is not None and book.running.version == challenger
    assert policies.built(spec) is not None
    with engine.begin() as conn:
        store.update_canary(conn, canary.id, status="rejected")
    book.refresh()
    assert book.running is None and policies.built(spec) is None


@pytest.mark.parametrize("ended_first", [False, True])
def test_a_promoted_canary_serves_as_champion_without_a_second_load(
    world: tuple[Settings, Engine], ended_first: bool
) -> None:
    """VW holds the GIL while it loads a model, and the worker's requests wait: the champion
    takes the scorer its canary loaded, whether the canary has ended in this worker yet or
    not."""
    import asyncio

    from slatebandit.policies import PolicySet, VWPolicy, follow_champion
    from slatebandit.policies.canary import CanaryBook

    settings, engine = world
    champion, challenger, canary = _canary_started(engine, settings)
    serving = VWPolicy(VWScorer(settings.vw_args), *_layout())
    policies = PolicySet(settings, engine, serving)
    book = CanaryBook(engine, prepare=policies.get, forget=policies.forget)
    book.refresh()
    assert asyncio.run(follow_champion(engine, serving, policies.loaded))
    assert serving.scorer.version == champion  # not a canary's: loaded
    canary_scorer = policies.loaded(challenger)
    assert canary_scorer is not None and canary_scorer.version == challenger
    with engine.begin() as conn:
        store.update_canary(conn, canary.id, status="promoted")
        models.promote(conn, challenger, reason="test: the canary's verdict")
    if ended_first:
        book.refresh()
        assert policies.built(f"vw@{challenger}") is None
    assert asyncio.run(follow_champion(engine, serving, policies.loaded))
    assert serving.scorer is canary_scorer


def _layout() -> tuple[object, tuple[int, ...], tuple[int, ...]]:
    from slatebandit.bandit import Exploration

    return Exploration("epsilon", 0.05, 50.0, 0.1), (4, 9), (2, 7)
