"""``GET /metrics``: what it counts, what it reads at scrape time, who may read it, and that its
counters are summed correctly across the workers of a real ``slatebandit serve --workers 2``."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from slatebandit.config import Settings
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog, serve_with_clicks, train_version
from tests.test_e2e import _free_port, _start, _wait_healthy

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counts_slates_kinds_feedback_and_routes(client: TestClient) -> None:
    before = scrape(client.get("/metrics").text)
    kinds: dict[str, int] = {}
    for i in range(5):
        body = client.post("/v1/slates", json={"user_id": f"u{i}", "k": 4}).json()
        for item in body["items"]:
            kinds[item["kind"]] = kinds.get(item["kind"], 0) + 1
    first = body["items"][0]["item_id"]
    reward = {"event_id": body["event_id"], "item_id": first}
    assert client.post("/v1/rewards", json=reward).is_success
    assert client.post("/v1/rewards", json=reward).json()["duplicate"]  # counted once
    odd = {**reward, "type": "wishlisted", "reward": 0.2}  # outside the reward table
    assert client.post("/v1/rewards", json=odd).is_success
    assert client.post("/v1/slates?dry_run=true", json={"user_id": "u0", "k": 4}).is_success
    event = {"user_id": "u1", "item_id": first, "type": "add_to_cart"}
    assert client.post("/v1/events", json=event).is_success
    assert client.post("/v1/slates", json={"k": 4}).status_code == 400  # no user_id
    assert client.get("/no/such/route").status_code == 404
    assert client.get("/console/").status_code == 200
    assert client.post("/personalizer/v1.0/rank", json={}).status_code == 400
    after = scrape(client.get("/metrics").text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("slatebandit_slates_total", policy="vw", arm="") == 5
    for kind, n in kinds.items():
        assert delta("slatebandit_slot_kinds_total", kind=kind) == n
    assert delta("slatebandit_rewards_total", type="click") == 1
    assert delta("slatebandit_rewards_total", type="other") == 1
    assert delta("slatebandit_rewards_total", type="wishlisted") == 0
    # A dry run is timed apart, and is no slate served.
    assert delta("slatebandit_responses_total", route="/v1/slates?dry_run", status="2xx") == 1
    assert delta("slatebandit_events_total", type="add_to_cart") == 1
    # Routes by template; the failed slate is timed and counted as a 4xx, never as a slate.
    assert delta("slatebandit_request_duration_seconds_count", route="/v1/slates") == 6
    assert delta("slatebandit_responses_total", route="/v1/slates", status="2xx") == 5
    assert delta("slatebandit_responses_total", route="/v1/slates", status="4xx") == 1
    assert delta("slatebandit_responses_total", route="unmatched", status="4xx") == 1
    assert delta("slatebandit_responses_total", route="/console", status="2xx") == 1
    personalizer = {
        dict(labels)["route"]
        for (name, labels), n in after.items()
        if name == "slatebandit_responses_total"
        and dict(labels)["route"].endswith("/rank")
        and n > before.get((name, labels), 0.0)
    }
    assert personalizer == {"/personalizer/v1.0/rank"}  # a template, under its mount
    # The histogram's buckets are cumulative and end in +Inf, equal to the count.
    count = value(after, "slatebandit_request_duration_seconds_count", route="/v1/slates")
    inf = value(after, "slatebandit_request_duration_seconds_bucket", route="/v1/slates", le="+Inf")
    assert inf == count


def test_scrape_time_figures_match_the_json_routes(settings: Settings) -> None:
    serve_with_clicks(settings, 30, 0, 4)
    version = train_version(settings, flip=False)
    with TestClient(create_app(settings)) as client:
        samples = scrape(client.get("/metrics").text)
        health = client.get("/healthz").json()
        assert value(samples, "slatebandit_database_up") == 1
        assert value(samples, "slatebandit_catalog_items") == health["items"] == 600
        assert value(samples, "slatebandit_spool_bytes") == health["spool"]["bytes"] == 0
        assert value(samples, "slatebandit_model_version", role="latest") == version
        assert ("slatebandit_model_version", (("role", "champion"),)) not in samples
        # The new version has learned every decision but the held-out ones: nothing waits.
        models = client.get("/v1/models").json()
        examples = next(v["examples"] for v in models["versions"] if v["version"] == version)
        assert value(samples, "slatebandit_learned_examples_total") == examples > 0

        assert client.post(f"/v1/models/{version}/promote").status_code == 200
        samples = scrape(client.get("/metrics").text)
        assert value(samples, "slatebandit_model_version", role="champion") == version
        assert value(samples, "slatebandit_model_version", role="serving") == version
        manual = value(
            samples, "slatebandit_release_verdicts_total", stage="manual", outcome="promote"
        )
        assert manual == 1
        # A new decision is not learned yet: the lag is its age, small and positive.
        client.post("/v1/slates", json={"user_id": "late", "k": 4})
        lag = value(scrape(client.get("/metrics").text), "slatebandit_learner_lag_seconds")
        assert 0 < lag < 60


@pytest.mark.parametrize(("key", "status"), [(None, 401), ("s3rve", 403), ("an4lyst", 200)])
def test_metrics_need_the_analyst_scope(
    tmp_path: Path, small_catalog: list, key: str | None, status: int
) -> None:
    settings = make_settings(tmp_path, api_keys="serve:s3rve,analyst:an4lyst")
    seed_catalog(settings.database_url, small_catalog)
    headers = {} if key is None else {"x-api-key": key}
    with TestClient(create_app(settings)) as client:
        assert client.get("/metrics", headers=headers).status_code == status


@pytest.mark.slow
def test_counters_are_summed_across_two_workers(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    port = _free_port()
    server = _start(data_dir, port, "--workers", "2", "--demo", "--demo-items", "500")
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(server, base)
        n, rewarded = 80, 0
        for i in range(n):  # a new connection each: the kernel spreads them over the workers
            body = httpx.post(base + "/v1/slates", json={"user_id": f"u{i}", "k": 3}).json()
            if i % 4 == 0:
                reward = {"event_id": body["event_id"], "item_id": body["items"][0]["item_id"]}
                assert httpx.post(base + "/v1/rewards", json=reward).status_code == 202
                rewarded += 1
        counted = {path.name for path in (data_dir / "metrics").glob("counter_*.db")}
        assert len(counted) >= 2, counted  # both workers served, each into its own file
        for _ in range(6):  # whichever worker answers the scrape, the totals are the sums
            samples = scrape(httpx.get(base + "/metrics").text)
            assert value(samples, "slatebandit_slates_total", policy="vw", arm="") == n
            assert value(samples, "slatebandit_slot_kinds_total", kind="exploit") > 0
            assert value(samples, "slatebandit_rewards_total", type="click") == rewarded
            slates = value(
                samples, "slatebandit_request_duration_seconds_count", route="/v1/slates"
            )
            assert slates == n
            assert value(samples, "slatebandit_catalog_items") == 500  # read once, not summed
            assert value(samples, "slatebandit_database_up") == 1
        live = list((data_dir / "metrics").glob("gauge_livesum_*.db"))
        assert len(live) >= 2, live  # each worker's frozen-object count, summed while it lives
    finally:
        server.terminate()
        server.wait(timeout=60)
    # A worker that exits takes its live gauges with it; its counters stay.
    assert not list((data_dir / "metrics").glob("gauge_livesum_*.db"))
    assert len(list((data_dir / "metrics").glob("counter_*.db"))) >= 2


ROOT = Path(__file__).resolve().parent.parent


def _base(name: str, histograms: set[str]) -> str:
    """A histogram's series (``_bucket``, ``_count``, ``_sum``) by the histogram's name."""
    for suffix in ("_bucket", "_count", "_sum"):
        if name.removesuffix(suffix) in histograms:
            return name.removesuffix(suffix)
    return name


def test_readme_table_and_grafana_dashboard_name_every_metric_and_only_those(
    client: TestClient,
) -> None:
    body = client.post("/v1/slates", json={"user_id": "u1", "k": 4}).json()
    reward = {"event_id": body["event_id"], "item_id": body["items"][0]["item_id"]}
    client.post("/v1/rewards", json=reward)
    client.post("/v1/events", json={"user_id": "u1", "item_id": reward["item_id"], "type": "view"})
    families = list(text_string_to_metric_families(client.get("/metrics").text))
    histograms = {family.name for family in families if family.type == "histogram"}
    exposed = {
        _base(sample.name, histograms)
        for family in families
        for sample in family.samples
        if sample.name.startswith("slatebandit_")
    }
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `(slatebandit_\w+)` \|", readme, re.MULTILINE))
    # Absent until they happen: a canary, a verdict (names still in the table).
    assert exposed <= table and table - exposed <= {"slatebandit_release_verdicts_total"}
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    used = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        for target in panel["targets"]:
            names = re.findall(r"slatebandit_\w+", target["expr"])
            used |= {_base(name, histograms) for name in names}
    assert used <= table, used - table
    # Every paging figure of the issue has a panel.
    assert {"slatebandit_database_up", "slatebandit_learner_lag_seconds"} <= used


def test_timing_labels_by_endpoint_where_starlette_sets_no_route() -> None:
    """Starlette before 1.0 puts the matched endpoint in the scope, not the route."""
    from starlette.routing import Route

    from slatebandit.server.metrics import RESPONSES, Timing

    async def endpoint(request: object) -> None: ...

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        scope["endpoint"] = endpoint
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def sent(message: object) -> None: ...

    timing = Timing(app, [Route("/v1/things/{thing_id:str}", endpoint)])  # type: ignore[arg-type]
    counted = RESPONSES.labels("/v1/things/{thing_id}", "2xx")
    before = counted._value.get()
    asyncio.run(timing({"type": "http"}, None, sent))  # type: ignore[arg-type]
    assert counted._value.get() == before + 1
