"""The soak's reading of the server's own latency histogram (``benchmarks/soak.py``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from benchmarks.soak import server_tail, slate_buckets


def _metrics(slates_ms: list[float], other_ms: list[float]) -> str:
    registry = CollectorRegistry()
    duration = Histogram(
        "slatebandit_request_duration_seconds",
        "as the server's",
        ["route"],
        # some of the server's buckets, those either side of 50 ms among them
        buckets=(0.005, 0.01, 0.025, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0),
        registry=registry,
    )
    for ms in slates_ms:
        duration.labels("/v1/slates").observe(ms / 1000)
    for ms in other_ms:
        duration.labels("/v1/rewards").observe(ms / 1000)
    return generate_latest(registry).decode()


def test_a_minutes_server_tail_is_read_from_the_histograms_difference() -> None:
    before = _metrics([3.0] * 50, [])
    # The minute adds 200 slates (2 of them, 1%, slower than 100 ms) and slow rewards,
    # which must not count.
    after = _metrics([3.0] * 50 + [4.0] * 150 + [40.0] * 48 + [180.0] * 2, [900.0] * 30)
    tail = server_tail(slate_buckets(after), slate_buckets(before))
    assert tail == {"server_p99_ms_at_most": 50.0, "server_within_50ms": 0.99}
    three_slow = _metrics([3.0] * 50 + [4.0] * 150 + [40.0] * 47 + [180.0] * 3, [])
    assert server_tail(slate_buckets(three_slow), slate_buckets(before)) == {
        "server_p99_ms_at_most": 250.0,
        "server_within_50ms": 0.985,
    }
    assert server_tail(slate_buckets(before), slate_buckets(before)) == {
        "server_p99_ms_at_most": None,
        "server_within_50ms": None,
    }
