"""The console's server side without a browser: ``GET /v1/access``, the redirect from ``/``,
and the static files (JavaScript modules must carry a JavaScript type or browsers refuse them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from slatebandit.items import Item
from slatebandit.server import create_app
from tests.conftest import make_settings, seed_catalog


def test_an_open_server_grants_every_scope(client: TestClient) -> None:
    answer = client.get("/v1/access").json()
    assert answer == {
        "open": True,
        "key": "none",
        "scopes": ["serve", "catalog", "analyst", "admin"],
    }


@pytest.mark.parametrize(
    ("headers", "key", "scopes"),
    [
        ({}, "missing", []),
        ({"x-api-key": "nope"}, "unknown", []),
        ({"x-api-key": "an4lyst"}, "ok", ["analyst"]),
        ({"authorization": "Bearer adm1n"}, "ok", ["admin"]),
    ],
)
def test_access_names_the_presented_keys_scopes(
    tmp_path: Path, small_catalog: list[Item], headers: dict[str, str], key: str, scopes: list[str]
) -> None:
    settings = make_settings(tmp_path, api_keys="analyst:an4lyst,admin:adm1n")
    seed_catalog(settings.database_url, small_catalog)
    with TestClient(create_app(settings)) as client:
        answer = client.get("/v1/access", headers=headers)
        assert answer.status_code == 200  # asking is never an error in the browser's console
        assert answer.json() == {"open": False, "key": key, "scopes": scopes}


def test_the_root_leads_to_the_console_and_its_files_are_served(client: TestClient) -> None:
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200 and 'src="js/app.js"' in page.text
    for module in ("app", "api", "dom", "charts", "overview", "models", "experiments"):
        script = client.get(f"/console/js/{module}.js")
        assert script.status_code == 200
        assert script.headers["content-type"].split(";")[0] in (
            "text/javascript",
            "application/javascript",
        )
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    assert client.get("/console/js/missing.js").status_code == 404
