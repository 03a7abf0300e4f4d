"""The web console in a real headless Chromium (Debian's ``chromium``, driven by Playwright),
against a real ``slatebandit serve`` fed by the storefront simulator.

Each page is loaded and checked against the JSON routes it reads; any JavaScript error or
console error fails the test. A screenshot of each page (desktop and phone width) is saved
under the test's tmp dir; with ``SLATEBANDIT_CONSOLE_SHOTS=DIR`` the desktop ones are also
written there (how ``docs/console/`` is made). These tests never skip: without Chromium they
fail, saying how to install it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx2 as httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, expect, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from slatebandit.items import Item
from slatebandit.simulate import Simulation, Storefront
from tests.conftest import live_server, make_settings, seed_catalog
from tests.test_e2e import _free_port, _start, _wait_healthy

pytestmark = pytest.mark.slow

PAGES = ("overview", "models", "experiments", "replay", "inspector", "catalog")
PHONE = {"width": 390, "height": 844}
SETTINGS = {  # learn at once and checkpoint every second, so versions exist within seconds
    "reward_wait": "0",
    "checkpoint_seconds": "1",
    "model_poll_seconds": "1",
}


@dataclass
class Server:
    base: str
    shots: Path
    errors: list[str] = field(default_factory=list)

    def slates_served(self) -> float:
        """Every worker's count of slates served, from /metrics (read fresh each time)."""
        text = httpx.get(self.base + "/metrics", timeout=30).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "slatebandit_slates_total"
        )

    def json(self, path: str) -> dict:  # type: ignore[type-arg]
        answer = httpx.get(self.base + path, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Chromium is required: apt-get install chromium (.ci/run does)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``slatebandit serve --workers 2`` with a simulated storefront's traffic, and a model
    version promoted by the learner's first checkpoint or waiting for one."""
    root = tmp_path_factory.mktemp("console")
    port = _free_port()
    process = _start(root / "var", port, "--workers", "2", **SETTINGS)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, base)
        with httpx.Client(base_url=base, timeout=30) as client:
            storefront = Storefront.generate(400, 60, seed=7)
            simulation = Simulation(client, storefront, "vw", k=5, seed=7)
            simulation.upload_catalog()
            _buy(client, 12)  # before the first checkpoint, so no canary serves them
            for _ in range(3):
                simulation.run_window(100)
        deadline = time.monotonic() + 120
        while not httpx.get(base + "/v1/models").json()["versions"]:
            assert time.monotonic() < deadline, "no model version within 2 minutes"
            time.sleep(0.2)  # the learner is another process: nothing to await
        yield Server(base, root / "shots")
    finally:
        process.terminate()
        process.wait(timeout=60)


def _buy(client: httpx.Client, n: int) -> None:
    """``n`` slates whose first item is bought for a price (the simulator posts clicks only)."""
    for i in range(n):
        slate = client.post("/v1/slates", json={"user_id": f"buyer{i}", "k": 5}).json()
        bought = {
            "event_id": slate["event_id"],
            "item_id": slate["items"][0]["item_id"],
            "type": "purchase",
            "value": 20.0 + 3 * i,
        }
        assert client.post("/v1/rewards", json=bought).status_code == 202


def _fixed(x: float, digits: int) -> str:
    """``x.toFixed(digits)`` as the browser writes it: the exact binary value, ties upwards."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _percent(x: float) -> str:
    """The console's ``percent(x)``."""
    return _fixed(100 * x, 2) + "%"


def _open(browser: Browser, server: Server, page_name: str, viewport: dict | None = None) -> Page:  # type: ignore[type-arg]
    page = browser.new_page(viewport=viewport or {"width": 1280, "height": 900})

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            server.errors.append(f"{page_name}: {message.text}")

    def on_error(error: Error) -> None:
        server.errors.append(f"{page_name}: {error}")

    page.on("console", on_console)
    page.on("pageerror", on_error)
    page.goto(f"{server.base}/console/#/{page_name}")
    return page


def _shoot(page: Page, server: Server, name: str) -> None:
    server.shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=server.shots / f"{name}.png", full_page=True)
    docs = os.environ.get("SLATEBANDIT_CONSOLE_SHOTS")
    if docs and not name.endswith("-phone"):
        Path(docs).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=Path(docs) / f"{name}.png", full_page=False)


def _done(page: Page, server: Server, name: str) -> None:
    _shoot(page, server, name)
    page.close()
    assert not server.errors, server.errors


def test_the_root_opens_the_console(server: Server, browser: Browser) -> None:
    page = _open(browser, server, "")
    page.goto(server.base + "/")
    expect(page).to_have_url(f"{server.base}/console/")
    expect(page.locator("nav a")).to_have_count(len(PAGES))
    expect(page.locator("nav a.active")).to_have_text("Overview")
    _done(page, server, "root")


def test_overview_shows_the_traffic_the_log_holds(server: Server, browser: Browser) -> None:
    stats = server.json("/v1/stats?minutes=60&step=60")
    slates = sum(b["slates"] for b in stats["traffic"])
    shown = sum(b["shown"] for b in stats["traffic"])
    clicks = sum(b["clicks"] for b in stats["traffic"])
    page = _open(browser, server, "overview")
    expect(page.locator('[data-figure="slates"] .value')).to_have_text(f"{slates:,}")
    expect(page.locator('[data-figure="ctr"] .value')).to_have_text(f"{100 * clicks / shown:.2f}%")
    expect(page.locator('[data-figure="items"] .value')).to_have_text("400")
    expect(page.locator('[data-figure="database"] .value')).to_have_text("ok")
    # One row per policy and arm, in the order the buckets first name them. On a slow box the
    # first checkpoint's canary can take some of the fixture's slates: each row says its own.
    arms: dict[str, int] = {}
    for b in stats["traffic"]:
        name = f"{b['policy']} · {b['arm']}" if b.get("arm") else b["policy"]
        arms[name] = arms.get(name, 0) + b["slates"]
    assert "vw" in arms
    table = page.locator("#arm-table tbody tr")
    expect(table.locator("td:nth-child(1)")).to_have_text(list(arms))
    expect(table.locator("td:nth-child(2)")).to_have_text([f"{n:,}" for n in arms.values()])
    expect(page.locator("figure.chart").first.locator("svg circle")).not_to_have_count(0)
    assert page.locator('[data-figure="p99"] .value').inner_text().endswith("ms")
    # What the slates led to, as GET /v1/metrics/summary says (nothing moves the log now).
    summary = server.json("/v1/metrics/summary?minutes=60")
    overall = summary["overall"]
    assert overall["slates"] == slates and overall["conversions"] >= 12 and overall["revenue"] > 0
    ctr, revenue = overall["ctr"], overall["revenue_per_slate"]
    expect(page.locator('[data-figure="summary-ctr"] .value')).to_have_text(_percent(ctr["value"]))
    expect(page.locator('[data-figure="summary-ctr"] .note')).to_have_text(
        f"95%: {_percent(ctr['low'])} to {_percent(ctr['high'])}"
    )
    expect(page.locator('[data-figure="summary-conversion"] .value')).to_have_text(
        _percent(overall["conversion_rate"]["value"])
    )
    expect(page.locator('[data-figure="summary-revenue"] .value')).to_have_text(
        _fixed(revenue["value"], 2)
    )
    rows = page.locator("#placement-table tbody tr")
    expect(rows).to_have_count(len(summary["placements"]))
    home = next(p for p in summary["placements"] if p["placement"] == "home")
    cells = rows.filter(has_text="home").first.locator("td")
    expect(cells.nth(1)).to_have_text(_fixed(100 * home["share"], 1) + "%")
    expect(cells.nth(2)).to_have_text(f"{home['slates']:,}")
    low, high = home["revenue_per_slate"]["low"], home["revenue_per_slate"]["high"]
    expect(cells.nth(5)).to_have_text(
        f"{_fixed(home['revenue_per_slate']['value'], 2)} [{_fixed(low, 2)}, {_fixed(high, 2)}]"
    )
    _done(page, server, "overview")


def test_models_page_promotes_with_a_confirmation_and_shows_the_verdict(
    server: Server, browser: Browser
) -> None:
    models = server.json("/v1/models")
    version = models["versions"][-1]["version"]
    page = _open(browser, server, "models")
    expect(page.locator('[data-figure="champion"] .value')).to_have_text(
        str(models["champion"] or "none")
    )
    expect(page.locator("#versions tbody tr")).to_have_count(len(models["versions"]))
    if models["champion"] == version:  # promote an older one instead, if there is one
        version = models["versions"][0]["version"]
    row = page.locator("#versions tbody tr").filter(has_text=str(version)).first
    row.get_by_role("button", name="Promote").click()
    expect(row.locator(".question")).to_have_text(f"Make version {version} the champion? ")
    row.get_by_role("button", name="Confirm").click()
    expect(page.locator('[data-figure="champion"] .value')).to_have_text(str(version))
    # The learner may record a verdict of its own just after (a canary superseded).
    manual = page.locator("#verdicts tbody tr").filter(has_text="manual")
    expect(manual).to_have_count(1)
    expect(manual).to_contain_text("promote")
    expect(manual.locator("td").nth(1)).to_have_text(str(version))
    assert server.json("/v1/models")["champion"] == version
    _done(page, server, "models")


def test_experiments_page_creates_reports_and_stops(server: Server, browser: Browser) -> None:
    page = _open(browser, server, "experiments")
    expect(page.locator("#experiment-list")).to_contain_text("No experiment yet.")
    page.fill("#new-name", "console-ab")
    page.fill("#new-arms", "control=vw:0.5\ntreatment=popular:0.5")
    page.locator("#new-experiment").get_by_role("button", name="Save").click()
    expect(page.locator("#report tbody tr")).to_have_count(2)
    # Traffic for the report, until both arms have some: a worker that did not take the PUT
    # learns of the experiment at its next poll, and serves outside it until then.
    deadline = time.monotonic() + 60
    i = 0
    while not all(a["slates"] for a in server.json("/v1/experiments/console-ab/report")["arms"]):
        assert time.monotonic() < deadline, "the experiment served no slates within a minute"
        for _ in range(20):  # a new connection each, so both workers serve
            body = httpx.post(server.base + "/v1/slates", json={"user_id": f"ab{i}", "k": 4})
            if i % 3 == 0:
                item = body.json()["items"][0]["item_id"]
                reward = {"event_id": body.json()["event_id"], "item_id": item}
                httpx.post(server.base + "/v1/rewards", json=reward)
            i += 1
    page.reload()
    report = server.json("/v1/experiments/console-ab/report")
    for arm in report["arms"]:
        row = page.locator("#report tbody tr").filter(has_text=arm["arm"]).first
        expect(row.locator("td").nth(3)).to_have_text(f"{arm['slates']:,}")
    expect(page.locator("#experiment figure.chart svg circle")).not_to_have_count(0)
    _shoot(page, server, "experiments")
    page.get_by_role("button", name="Stop").click()
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#experiment h3").first).to_contain_text("(stopped)")
    assert server.json("/v1/experiments/console-ab")["status"] == "stopped"
    _done(page, server, "experiments-stopped")


def test_replay_page_runs_an_evaluation_and_shows_its_report(
    server: Server, browser: Browser
) -> None:
    page = _open(browser, server, "replay")
    page.fill("#policies", "random, popular")
    page.fill("#bootstrap", "50")
    page.get_by_role("button", name="Start the replay").click()
    expect(page.locator("#replay-report")).to_be_visible(timeout=120_000)
    evaluation_id = page.locator("#replay-status p").inner_text().split()[1].rstrip(":")
    result = server.json(f"/v1/evaluations/{evaluation_id}")["result"]
    first = result["policies"][0]
    ips = next(e for e in first["estimates"] if e["estimator"] == "ips")
    table = page.locator("table.estimates").first
    expect(table.locator("tbody tr").first.locator("td").nth(1)).to_have_text(f"{ips['value']:.5f}")
    expect(page.locator("#replay-report figure.chart svg circle")).not_to_have_count(0)
    # The run is listed, and opening it again shows the same report.
    expect(page.locator("#evaluations tbody tr").first).to_contain_text("random, popular")
    page.reload()
    page.locator("#evaluations tbody tr").first.get_by_role("link").click()
    expect(
        page.locator("table.estimates").first.locator("tbody tr").first.locator("td").nth(1)
    ).to_have_text(f"{ips['value']:.5f}")
    _done(page, server, "replay")


def test_slate_inspector_shows_a_dry_run_that_logs_nothing(
    server: Server, browser: Browser
) -> None:
    before = server.slates_served()
    page = _open(browser, server, "inspector")
    page.fill("#user", "inspected-shopper")
    page.fill("#k", "6")
    page.get_by_role("button", name="Show the slate").click()
    expect(page.locator("#slate tbody tr")).to_have_count(6)
    candidates = page.locator("#candidates tbody tr")
    assert candidates.count() > 6
    for i in range(6):
        propensity = float(page.locator("#slate tbody tr").nth(i).locator("td").nth(2).inner_text())
        assert 0 < propensity <= 1
    expect(page.locator("#candidates tbody tr").filter(has_text="yes")).to_have_count(6)
    assert server.slates_served() == before  # a dry run is no slate served
    _done(page, server, "inspector")


def test_catalog_page_searches_and_shows_neighbours(server: Server, browser: Browser) -> None:
    page = _open(browser, server, "catalog")
    first = server.json("/v1/items?q=&limit=50")["items"][0]["item_id"]
    expect(page.locator("#items tbody tr")).to_have_count(50)
    page.locator("#items tbody tr").first.get_by_role("link").click()
    answer = server.json(f"/v1/items/{first}?neighbours=10")
    expect(page.locator("#neighbours tbody tr")).to_have_count(len(answer["neighbours"]))
    best = answer["neighbours"][0]
    expect(page.locator("#neighbours tbody tr").first).to_contain_text(best["item_id"])
    expect(page.locator("#neighbours tbody tr").first).to_contain_text(f"{best['similarity']:.3f}")
    _done(page, server, "catalog")


@pytest.mark.parametrize("name", PAGES)
def test_every_page_fits_a_phone(server: Server, browser: Browser, name: str) -> None:
    page = _open(browser, server, name, viewport=PHONE)
    expect(page.locator("main h2").first).to_be_visible()
    page.wait_for_load_state("networkidle")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{name} is {width} px wide on a {PHONE['width']} px phone"
    _done(page, server, f"{name}-phone")


def test_with_keys_it_asks_once_and_shows_what_the_scope_allows(
    tmp_path: Path, small_catalog: list[Item], browser: Browser
) -> None:
    settings = make_settings(tmp_path, api_keys="analyst:an4lyst,serve:s3rve,admin:adm1n")
    seed_catalog(settings.database_url, small_catalog)
    with live_server(settings) as base:
        server = Server(base, tmp_path / "shots")
        httpx.post(base + "/v1/slates", json={"user_id": "u"}, headers={"x-api-key": "s3rve"})
        page = _open(browser, server, "models")
        expect(page.locator("#key")).to_be_visible()
        page.fill("#key", "wrong")
        page.get_by_role("button", name="Open the console").click()
        expect(page.locator("form .error")).to_have_text("That key was not accepted.")
        page.fill("#key", "an4lyst")
        page.get_by_role("button", name="Open the console").click()
        expect(page.locator("#who")).to_contain_text("analyst")
        expect(page.locator("main h2")).to_have_text("Models")
        expect(page.get_by_role("button", name="Roll back")).to_have_count(0)  # admin only
        page.goto(f"{base}/console/#/experiments")  # the key is kept for the session
        expect(page.locator("main h2")).to_have_text("Experiments")
        expect(page.locator("#new-experiment")).to_have_count(0)
        _shoot(page, server, "analyst")
        page.get_by_role("button", name="forget key").click()
        page.fill("#key", "s3rve")
        page.get_by_role("button", name="Open the console").click()
        expect(page.locator("main h2")).to_have_text("Nothing to show for this key")
        page.get_by_role("button", name="forget key").click()
        page.fill("#key", "adm1n")
        page.get_by_role("button", name="Open the console").click()
        expect(page.locator("#new-experiment")).to_be_visible()
        _done(page, server, "keys")
