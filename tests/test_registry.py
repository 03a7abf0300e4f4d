"""The model registry: versions, promotion over HTTP and CLI, rollback, the serving swap."""

from __future__ import annotations

import asyncio

from starlette.testclient import TestClient

from slatebandit.bandit import (
    FEATURE_SPEC_VERSION,
    Exploration,
    SharedFeatures,
    VWScorer,
    slot_example,
)
from slatebandit.cli import main
from slatebandit.logging import open_engine
from slatebandit.logging.models import champion, save_version
from slatebandit.policies import VWPolicy, follow_champion
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog

ARGS = "--cb_adf --cb_type mtr -q ui -q ci -b 18"


def _trained_version(url: str, parent: int | None = None, reward: float = 1.0) -> int:
    scorer = VWScorer(ARGS)
    shared = SharedFeatures.build({"device": "web"}, at=0)
    for i in range(50):
        scorer.learn(slot_example(shared, 0, f"k{i % 7 + 1} c=x{i % 3}", reward, 0.5))
    engine = open_engine(url)
    with engine.begin() as conn:
        version = save_version(
            conn,
            parent=parent,
            vw_args=ARGS,
            feature_spec=FEATURE_SPEC_VERSION,
            examples=50,
            learned_through=0,
            model=scorer.to_bytes(),
        )
    engine.dispose()
    return version


def test_promote_over_http_swaps_the_serving_model_and_decisions_log_it(
    tmp_path, small_catalog
) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, api_keys="admin:root,serve:s")
    seed_catalog(settings.database_url, small_catalog[:100])
    first = _trained_version(settings.database_url)
    second = _trained_version(settings.database_url, parent=first, reward=-1.0)
    admin, serve = {"x-api-key": "root"}, {"x-api-key": "s"}
    with TestClient(create_app(settings)) as client:
        slate = client.post("/v1/slates", json={"user_id": "a"}, headers=serve).json()
        assert slate["model_version"] == 0  # nothing promoted yet: the untrained model

        assert client.get("/v1/models", headers=serve).status_code == 403
        listed = client.get("/v1/models", headers=admin).json()
        assert [v["version"] for v in listed["versions"]] == [first, second]
        assert listed["champion"] is None and listed["serving"] == 0

        promoted = client.post(f"/v1/models/{second}/promote", headers=admin)
        assert promoted.status_code == 200 and promoted.json()["serving"] == second
        slate = client.post("/v1/slates", json={"user_id": "a"}, headers=serve).json()
        assert slate["model_version"] == second
        assert {s["score"] for s in slate["items"]} != {0.0}  # a trained model scores

        missing = client.post("/v1/models/999/promote", headers=admin)
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "version"

        nothing_before = client.post("/v1/models/rollback", headers=admin)
        assert nothing_before.status_code == 404  # one champion so far: nothing to return to
        client.post(f"/v1/models/{first}/promote", headers=admin)
        assert client.post("/v1/models/rollback", headers=serve).status_code == 403
        rolled = client.post("/v1/models/rollback", headers=admin)
        assert rolled.status_code == 200 and rolled.json() == {
            "champion": second,
            "serving": second,
        }

    # A restart serves the champion from the start.
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json()["model_version"] == second


def test_cli_promote_rollback_and_the_serving_swap(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'r.db'}"
    first = _trained_version(url)
    second = _trained_version(url, parent=first)
    assert main(["models", "promote", str(first), "--db", url]) == 0
    assert main(["models", "promote", str(second), "--db", url]) == 0
    assert main(["models", "list", "--db", url]) == 0
    assert main(["models", "show", str(second), "--db", url]) == 0
    assert '"champion": true' in capsys.readouterr().out
    assert main(["models", "promote", "42", "--db", url]) == 2

    engine = open_engine(url)
    policy = VWPolicy(VWScorer(ARGS), Exploration())
    assert asyncio.run(follow_champion(engine, policy)) is True
    assert policy.scorer.version == second
    assert asyncio.run(follow_champion(engine, policy)) is False  # nothing new: no reload

    assert main(["models", "rollback", "--db", url]) == 0
    with engine.connect() as conn:
        assert champion(conn) == first
    assert asyncio.run(follow_champion(engine, policy)) is True
    assert policy.scorer.version == first
    engine.dispose()


def test_rollback_without_history_is_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert main(["models", "rollback", "--db", f"sqlite:///{tmp_path / 'e.db'}"]) == 2


def test_old_checkpoints_lose_their_model_but_what_can_serve_keeps_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every checkpoint stored a model of megabytes for ever (half the soak's database growth).
    Pruning keeps the newest, the latest champions, and what canaries and experiments serve."""
    import pytest
    from sqlalchemy import insert

    from slatebandit.errors import NotFound
    from slatebandit.logging import models
    from slatebandit.logging.releases import start_canary
    from slatebandit.logging.schema import experiments

    url = f"sqlite:///{tmp_path / 'p.db'}"
    versions = [_trained_version(url) for _ in range(9)]  # 1..9
    engine = open_engine(url)
    with engine.begin() as conn:
        for v in (1, 2, 3):
            models.promote(conn, v, reason="test")
        start_canary(conn, version=4, champion=3, share=0.25)
        conn.execute(
            insert(experiments).values(
                name="ab",
                salt="s",
                arms=[{"name": "a", "policy": "blend:vw@5=0.5,popular=0.5", "share": 1.0}],
                control="a",
                allocation=b"",
                status="running",
                created_at=0.0,
                updated_at=0.0,
            )
        )
        assert models.prune_models(conn, keep=0) == 0  # 0 keeps every model
        # Kept: the newest two (8, 9), the last two champions (3, 2), the canary's 4 and the
        # experiment's 5; pruned: 1 (an older champion), 6 and 7.
        assert models.prune_models(conn, keep=2) == 3
        assert models.prune_models(conn, keep=2) == 0  # nothing left to prune
    with engine.connect() as conn:
        held = {v: models.has_model(conn, v) for v in versions}
        assert [v for v, has in held.items() if not has] == [1, 6, 7]
        assert models.get_version(conn, 6) is not None  # the row and its figures stay
        with pytest.raises(NotFound, match="model version 6 was pruned"):
            models.model_bytes(conn, 6)
    engine.dispose()
    assert main(["models", "promote", "7", "--db", url]) == 2  # a pruned model cannot serve
