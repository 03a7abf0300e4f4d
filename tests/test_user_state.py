"""Online user state in SQL: every event updates it before its 202, any worker sees it next."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from slatebandit.config import Settings
from slatebandit.memory import deep_bytes
from slatebandit.retrieval import UserState
from slatebandit.retrieval.demo import demo_items
from slatebandit.retrieval.user_state import (
    ACTED_ITEMS,
    COUNTERS,
    DECODED_PER_STORED,
    RECENT_ITEMS,
    SESSION_HALF_LIFE,
    UserStates,
    session_decay,
)
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog


def _state(client: TestClient, user: str) -> UserState:
    services = client.app_state["recommender"]
    return client.portal.call(services.user, user)[0]  # type: ignore[no-any-return]


def test_the_session_fades_by_half_per_half_life_in_steps() -> None:
    """Steps of a sixteenth of the half-life: events milliseconds apart, or a few seconds,
    give the same vector, so a seeded run does not depend on the machine's speed."""
    step = SESSION_HALF_LIFE / 16
    assert session_decay(0.0) == session_decay(0.004) == session_decay(step * 0.99) == 1.0
    assert session_decay(step) == pytest.approx(0.5 ** (1 / 16))
    assert session_decay(SESSION_HALF_LIFE) == 0.5 == session_decay(SESSION_HALF_LIFE + 1.0)
    assert session_decay(-5.0) == 1.0  # an event stamped before the state's last one
    first, second = UserState(), UserState()
    vector = np.ones(4, dtype=np.float32)
    for state, gap in ((first, 1.0), (second, 1.7)):
        state.observe(1, "click", vector, 100.0, "c", "b")
        state.observe(2, "click", 2 * vector, 100.0 + gap, "c", "b")
    assert np.array_equal(first.session_vector, second.session_vector)


def test_state_round_trips_and_stays_bounded() -> None:
    state = UserState()
    rng = np.random.default_rng(0)
    for i in range(300):
        vector = rng.standard_normal(8).astype(np.float32)
        state.observe(i, "click", vector, 1000.0 + i, f"cat{i % 40}", f"brand{i % 50}")
    assert len(state.recent) == RECENT_ITEMS
    assert state.recent_keys(3) == [299, 298, 297]
    assert len(state.acted["click"]) == ACTED_ITEMS
    assert len(state.categories) <= COUNTERS and len(state.brands) <= COUNTERS
    again = UserState.from_bytes(state.to_bytes())
    assert again.recent == state.recent and again.acted == state.acted
    assert again.categories == state.categories and again.brands == state.brands
    assert np.array_equal(again.session_vector, state.session_vector)
    assert again.updated_at == state.updated_at == 1299.0


def test_cached_states_stay_within_their_count_and_their_bytes() -> None:
    full = UserState()  # a shopper with the most history a state keeps
    for kind in ("view", "click", "add_to_cart", "purchase"):
        for i in range(ACTED_ITEMS):
            full.observe(i, kind, np.ones(64, dtype=np.float32), 1000.0 + i, f"c{i % 40}", "b")
    stored = full.to_bytes()
    decoded = UserState.from_bytes(stored)
    assert deep_bytes(decoded) <= DECODED_PER_STORED * len(stored)  # the estimate leans high
    budget = 10 * DECODED_PER_STORED * len(stored)
    states = UserStates(capacity=1_000, budget=budget)
    for i in range(25):
        states.put(f"u{i}", 1, UserState.from_bytes(stored), len(stored))
        assert states.size <= budget
    assert states.get("u24", 1) is not None and states.get("u14", 1) is None  # oldest out
    assert states.size == 10 * DECODED_PER_STORED * len(stored)
    states.put("u24", 2, UserState(), 10)  # a newer version replaces the entry and its size
    assert states.size == 9 * DECODED_PER_STORED * len(stored) + 10 * DECODED_PER_STORED
    states.drop("u24")
    assert states.get("u24", 2) is None and states.size == 9 * DECODED_PER_STORED * len(stored)
    small = UserStates(capacity=3)
    for i in range(5):
        small.put(f"u{i}", 1, UserState(), 100)
    assert small.memory().entries == 3 and small.size == 3 * 100 * DECODED_PER_STORED


def test_tastes_fade_by_their_half_life_and_never_without_one() -> None:
    fading, lasting = UserState(), UserState()
    for state, half_life in ((fading, 4.0), (lasting, 0.0)):
        state.observe(1, "click", None, 1.0, "shoes", "Nova", half_life)  # counts 2 (a click)
        for i in range(4):
            state.observe(2 + i, "view", None, 2.0 + i, "shirts", "Arto", half_life)
    assert fading.categories["shoes"] == pytest.approx(1.0)  # four actions later: half of 2
    assert fading.brands["Nova"] == pytest.approx(1.0)
    # Each view counts 1, faded by the views after it: 1 + f + f^2 + f^3, f = 2^(-1/4).
    fade = 0.5**0.25
    assert fading.categories["shirts"] == pytest.approx(sum(fade**n for n in range(4)))
    assert fading.top("categories", 1) == ["shirts"]
    assert lasting.categories == {"shoes": 2.0, "shirts": 4.0}


def test_exclusion_rules_follow_their_windows() -> None:
    state = UserState()
    state.observe(1, "purchase", None, 1000.0)
    state.observe(2, "add_to_cart", None, 1000.0)
    state.observe(3, "click", None, 1000.0)
    rules = {"purchase": None, "add_to_cart": 3600.0}
    assert state.excluded(rules, now=1000.0 + 60) == {1, 2}
    assert state.excluded(rules, now=1000.0 + 7200) == {1}
    assert state.excluded({}, now=1000.0) == set()
    parsed = Settings.from_env({}, exclude_events="purchase, add_to_cart:1h,view:30m").exclusions
    assert parsed == {"purchase": None, "add_to_cart": 3600.0, "view": 1800.0}


@pytest.mark.parametrize("bad", ["buy", "purchase:30x", "purchase:d", ":1h"])
def test_a_malformed_exclusion_rule_fails_at_start(bad: str) -> None:
    from slatebandit.errors import ConfigError

    with pytest.raises(ConfigError, match="EXCLUDE_EVENTS"):
        Settings.from_env({}, exclude_events=bad).validate()


def _two_workers(settings: Settings):  # type: ignore[no-untyped-def]
    """Two apps on one database: two workers as far as state goes (each has its own cache)."""
    return TestClient(create_app(settings)), TestClient(create_app(settings))


def _cross_worker(settings: Settings) -> None:
    items = list(demo_items(300, seed=4))
    seed_catalog(settings.database_url, items)
    first, second = _two_workers(settings)
    with first, second:
        assert _state(second, "ann").recent == []  # B caches the empty state
        clicked = items[7]
        event = {"user_id": "ann", "item_id": clicked.item_id, "type": "click"}
        assert first.post("/v1/events", json=event).status_code == 202
        on_b = _state(second, "ann")
        assert on_b.recent_keys(1) == [_key(second, clicked.item_id)]
        assert on_b.categories == {clicked.category: 2.0}
        assert on_b.session_vector is not None
        slate = second.post("/v1/slates", json={"user_id": "ann", "k": 10}).json()["items"]
        assert {"similar", "session"} & {item["source"] for item in slate}
        assert clicked.item_id not in {item["item_id"] for item in slate}  # just seen

        bought = slate[0]["item_id"]
        purchase = {"user_id": "ann", "item_id": bought, "type": "purchase"}
        assert second.post("/v1/events", json=purchase).status_code == 202
        for _ in range(5):  # never again, on either worker
            for client in (first, second):
                again = client.post("/v1/slates", json={"user_id": "ann", "k": 10}).json()
                assert bought not in {item["item_id"] for item in again["items"]}


def _key(client: TestClient, item_id: str) -> int:
    return int(client.app_state["recommender"].store.catalog.key_of[item_id])


def test_an_event_on_one_worker_shapes_the_next_slate_on_another(tmp_path: Path) -> None:
    _cross_worker(make_settings(tmp_path, learner="off"))


@pytest.mark.postgres
def test_an_event_on_one_worker_shapes_the_next_slate_on_another_postgres(
    tmp_path: Path, pg_url: str
) -> None:
    _cross_worker(make_settings(tmp_path, learner="off", db_url=pg_url))


def _no_lost_update(settings: Settings) -> None:
    items = list(demo_items(100, seed=5))
    seed_catalog(settings.database_url, items)
    first, second = _two_workers(settings)
    with first, second:

        def post(i: int) -> int:
            client = (first, second)[i % 2]
            event = {"user_id": "bob", "item_id": items[i % 50].item_id, "type": "view"}
            return client.post("/v1/events", json=event).status_code

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(post, range(120))) == {202}
        state = _state(first, "bob")
    # Every view counted once: each fades the counts before it, whatever the order, so 120
    # views sum to 1 + f + ... + f^119; a lost update would leave a smaller sum.
    fade = 0.5 ** (1 / settings.taste_half_life)
    assert sum(state.categories.values()) == pytest.approx(sum(fade**n for n in range(120)))
    assert len(state.acted["view"]) == 50


def test_concurrent_events_on_two_workers_lose_no_update(tmp_path: Path) -> None:
    _no_lost_update(make_settings(tmp_path, learner="off"))


@pytest.mark.postgres
def test_concurrent_events_on_two_workers_lose_no_update_postgres(
    tmp_path: Path, pg_url: str
) -> None:
    _no_lost_update(make_settings(tmp_path, learner="off", db_url=pg_url))


def test_a_state_from_an_older_embedding_space_takes_new_events(tmp_path: Path) -> None:
    """A stored session vector of another dimension (an older index) starts over instead of
    failing the event; a negative reward is not folded into what the user likes."""
    from slatebandit.logging import open_engine
    from slatebandit.logging.users import update_user_state

    settings = make_settings(tmp_path, learner="off")
    items = list(demo_items(50, seed=6))
    seed_catalog(settings.database_url, items)
    old = UserState()
    old.observe(1, "click", np.ones(64, dtype=np.float32), 1.0)
    engine = open_engine(settings.database_url)
    with engine.begin() as conn:
        update_user_state(conn, "legacy", lambda _: old.to_bytes())
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        event = {"user_id": "legacy", "item_id": items[3].item_id, "type": "view"}
        assert client.post("/v1/events", json=event).status_code == 202
        state = _state(client, "legacy")
        assert state.session_vector is not None
        assert state.session_vector.shape == (client.app_state["recommender"].store.index.dim,)
        slate = client.post("/v1/slates", json={"user_id": "legacy", "k": 3}).json()
        disliked = slate["items"][0]["item_id"]
        reward = {
            "event_id": slate["event_id"],
            "item_id": disliked,
            "type": "dislike",
            "reward": -1,
        }
        assert client.post("/v1/rewards", json=reward).status_code == 202
        after = _state(client, "legacy")
    key = client.app_state["recommender"].store.catalog.key_of[disliked]
    assert key not in after.recent_keys(20)


def _read_together_and_apart(url: str) -> None:
    from slatebandit.logging import open_engine
    from slatebandit.logging.users import (
        read_user,
        read_user_profile,
        read_user_state,
        save_user_profiles,
        update_user_state,
    )

    engine = open_engine(url)
    with engine.begin() as conn:
        update_user_state(conn, "stated", lambda old: b"s1")
        update_user_state(conn, "both", lambda old: b"s2")
        save_user_profiles(conn, {"profiled": ["tc=shoes"], "both": ["tb=acme", "tc=bags"]})
    with engine.connect() as conn:
        for user in ("nobody", "stated", "profiled", "both"):
            apart = read_user_state(conn, user), read_user_profile(conn, user)
            assert read_user(conn, user) == apart
        assert read_user(conn, "both")[1] == ["tb=acme", "tc=bags"]
        assert read_user(conn, "stated")[0][1] == b"s1"  # type: ignore[index]
    engine.dispose()


def test_a_slate_reads_state_and_profile_in_one_statement_sqlite(tmp_path: Path) -> None:
    _read_together_and_apart(f"sqlite:///{tmp_path / 'u.db'}")


def test_a_slate_reads_state_and_profile_in_one_statement_postgres(pg_url: str) -> None:
    _read_together_and_apart(pg_url)


def test_point_reads_run_on_the_event_loop_with_sqlite(client: TestClient) -> None:
    """A slate's state read skips the thread hop on SQLite (WAL: readers never wait); other
    reads, and a read that finds the database gone, behave as before."""
    import sqlite3
    import threading

    from sqlalchemy.exc import OperationalError

    from slatebandit.errors import DatabaseUnavailable

    recommender = client.app_state["recommender"]

    async def loop_thread() -> int:
        return threading.get_ident()

    def where(conn) -> int:  # type: ignore[no-untyped-def]
        return threading.get_ident()

    def gone(conn) -> None:  # type: ignore[no-untyped-def]
        raise OperationalError(
            "SELECT 1", {}, sqlite3.OperationalError("unable to open database file")
        )

    loop = client.portal.call(loop_thread)
    assert client.portal.call(recommender.point_read, where) == loop
    assert client.portal.call(recommender.read, where) != loop
    with pytest.raises(DatabaseUnavailable):
        client.portal.call(recommender.point_read, gone)
