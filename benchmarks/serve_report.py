"""``benchmarks.serve``'s phase 5: the results as a Markdown table."""

from __future__ import annotations

from typing import Any

from slatebandit.logging.items import LOAD_BATCH as BATCH  # as `items load` writes


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def mem(status: dict[str, float]) -> str:
    return f"{status['rss_mib']:,.0f} / {status['hwm_mib']:,.0f} MiB"


def markdown(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, dict[str, Any] | None]] = []

    def fig(phase: str, name: str, value: Any) -> None:
        rows.append((phase, name, _fmt(value), None))

    def lat(phase: str, name: str, stats: dict[str, Any]) -> None:
        rows.append((phase, name, f"n={stats.get('n', 0):,}", stats))

    n = results["items"]
    build = results["build"]
    fig("catalog", f"write {n:,} items (batches of {BATCH:,})", f"{build['catalog_write_s']:.1f} s")
    fig("catalog", "write rate", f"{build['catalog_items_per_s']:,.0f} items/s")
    fig("catalog", "SQLite file after write", f"{build['db_mib']:,.1f} MiB")
    fig("catalog", "other processes' CPU (should be ~0)", f"{build['other_cores_write']:.2f} cores")
    fig("index", "ItemStore.open (embed + hnswlib build)", f"{build['index_build_s']:.1f} s")
    fig("index", "other processes' CPU (should be ~0)", f"{build['other_cores_index']:.2f} cores")
    fig("index", "build rate", f"{build['index_items_per_s']:,.0f} items/s")
    fig("index", "index files", f"{build['index_mib']:,.1f} MiB")
    fig(
        "index",
        "RSS after build (VmRSS / VmHWM)",
        mem(build["rss_after_index"]),
    )
    ip = results["in_process"]
    fig("in-process", "app startup (catalog read + index load)", f"{ip['startup_s']:.1f} s")
    rss = ip["rss_after_requests"]
    fig(
        "in-process",
        "RSS after requests (VmRSS / VmHWM)",
        mem(rss),
    )
    lat("in-process", "POST /v1/events incl. test client", ip["events"])
    for kind in ("all", "new", "warm"):
        lat(
            "in-process",
            f"POST /v1/slates incl. test client ({kind} users)",
            ip["test_client"][kind],
        )
    fig(
        "in-process",
        "other processes' CPU (should be ~0)",
        f"{ip['other_cores_test_client']:.2f} / {ip['other_cores_direct']:.2f} cores",
    )
    direct = ip["direct"]
    lat("in-process", "create_slate handler, no HTTP, incl. commit", direct["handler"])
    lat("in-process", "decision path, no HTTP, excl. commit (all users)", direct["decision"])
    for kind in ("new", "warm"):
        lat("in-process", f"decision path, excl. commit ({kind} users)", ip["direct_by_user"][kind])
    lat("in-process", "group commit of the decision (1 unit)", direct["commit"])
    labels = {
        "user_state": "shopper (one read: state and batch features)",
        "generate": "candidates (hnswlib, merge)",
        "vw_score": "VW scoring incl. example text",
        "slate_build": "slate builder (pmfs, sampling)",
        "payload": "payload encode (msgpack)",
        "rest": "rest: body, reasons, response",
    }
    for stage, label in labels.items():
        if stage in direct:
            lat("in-process", f"decision stage: {label}", direct[stage])
    gcs = ip["gc"]
    fig(
        "in-process",
        "GC pauses during the timed requests",
        f"gen2: {gcs['gen2']['count']} x, max {gcs['gen2']['max_ms']} ms; "
        f"gen0+1: {gcs['gen0']['count'] + gcs['gen1']['count']} x, "
        f"max {max(gcs['gen0']['max_ms'], gcs['gen1']['max_ms'])} ms",
    )
    for kind in ("new", "warm"):
        counts = ip["sources"][kind]
        fig(
            "in-process",
            f"shown items by source ({kind} users)",
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
        )
    for run in results["http"]:
        w = run["workers"]
        phase = f"HTTP workers={w}"
        fig(phase, "startup to ready (/healthz)", f"{run['ready_s']:.1f} s")
        fig(
            phase,
            "requests ok / errors",
            f"{run.get('ok', 0):,} / {sum(run.get('errors', {}).values())}",
        )
        fig(phase, "throughput", f"{run.get('slates_per_s', 0):,.1f} slates/s")
        for kind in ("all", "new", "warm"):
            if "latency" in run:
                lat(phase, f"client-observed latency ({kind} users)", run["latency"][kind])
        fig(
            phase,
            "load generator",
            f"{run['client_procs']} procs x asyncio/httpx, c={run['concurrency']}, "
            f"{run.get('client_cores', 0):.2f} cores",
        )
        fig(phase, "server CPU", f"{run.get('server_cores', 0):.2f} cores")
        fig(phase, "other processes' CPU (should be ~0)", f"{run.get('other_cores', 0):.2f} cores")
        for pid, status in run.get("rss", {}).items():
            fig(
                phase,
                f"worker {pid} RSS (VmRSS / VmHWM)",
                mem(status),
            )
        if "supervisor_rss" in run:
            status = run["supervisor_rss"]
            fig(
                phase,
                "supervisor RSS (VmRSS / VmHWM)",
                mem(status),
            )
    fig("run", "total wall time", f"{results['total_s']:.0f} s")

    lines = [
        f"## slatebandit serve benchmark: {n:,} items",
        "",
        f"{results['machine']['cpus']} CPUs ({results['machine']['cpu']}), "
        f"Python {results['machine']['python']}, SQLite on {results['machine']['data_fs']}; "
        f"latencies in ms.",
        "",
        "| phase | figure | value | p50 | p99 | p99.9 | max |",
        "|---|---|---|--:|--:|--:|--:|",
    ]
    for phase, name, value, stats in rows:
        if stats is None or not stats.get("n"):
            lines.append(f"| {phase} | {name} | {value} | | | | |")
        else:
            cells = " | ".join(f"{stats[p]:.2f}" for p in ("p50", "p99", "p99.9", "max"))
            lines.append(f"| {phase} | {name} | {value} | {cells} |")
    return "\n".join(lines)
