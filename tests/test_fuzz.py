"""Property-based fuzzing of every route in ``/openapi.json`` (schemathesis, over hypothesis)
against a real uvicorn on a loopback port: no generated request, valid or not, gets a 5xx.

Examples are derandomised, so every run sends the same requests. Over all routes that is more
than 5,000 requests (checked when the module's server stops).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from slatebandit.retrieval.demo import demo_items
from slatebandit.server.openapi import openapi_document
from tests.conftest import live_server, make_settings, seed_catalog

EXAMPLES = 320  # per route: 18 routes, over 5,000 requests
schema = schemathesis.openapi.from_dict(openapi_document())
SENT: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An open server (no keys: requests reach validation) with a small catalog."""
    tmp_path: Path = tmp_path_factory.mktemp("fuzz")
    served = make_settings(tmp_path, learner="off")
    seed_catalog(served.database_url, list(demo_items(300, seed=2)))
    with live_server(served) as base:
        yield base
    if len(SENT) == len(list(schema.get_all_operations())):  # the whole module ran
        print(f"fuzzing sent {sum(SENT.values())} requests over {len(SENT)} routes")
        assert sum(SENT.values()) >= 5000, SENT


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_generated_request_gets_a_server_error(case: schemathesis.Case, fuzzed: str) -> None:
    response = case.call(base_url=fuzzed, timeout=60)
    SENT[f"{case.method} {case.path}"] += 1
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text)
