"""Throughput side by side: a no-op Starlette route, then ``slatebandit serve`` (this checkout,
and optionally an older revision), each under the same wrk load, in one run.

    python -m benchmarks.throughput [--items 100000] [--workers 2] [--seconds 20]
                                    [--connections 64] [--before REV] [--after REV]
                                    [--rounds 1]

The no-op route (``benchmarks/noop.py``) decodes the JSON body and answers a small JSON
object: what uvicorn and Starlette cost on their own. Each slatebandit server starts from a
fresh copy of one prepared data directory (the demo catalog of ``--items`` items and its
index), so every run meets the same catalog and an empty log. wrk (Debian's ``wrk``) runs
``benchmarks/wrk_slates.lua``: k=10 for 500 rotating users, half with a session item. With
``--rounds`` above 1 the servers take turns, round after round, so slow minutes of a noisy box
fall on each. Prints a table (requests/s, client p50 and p99, ratio to the no-op route) and
writes ``benchmarks/results/throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Server, free_port, package_root, say, source_info

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "throughput.json"
SCRIPT = HERE / "wrk_slates.lua"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, seconds: int, connections: int) -> dict[str, float]:
    """wrk's requests/s, and its latency percentiles in ms."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(SCRIPT)]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    result = {"requests_per_s": float(found.group(1))}
    for percent, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)$", out, re.M):
        result[f"p{percent}_ms"] = round(float(value) * _UNITS[unit], 2)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non_2xx"] = int(errors.group(1)) if errors else 0
    return result


def noop(workers: int, seconds: int, connections: int, log: Path) -> dict[str, float]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "benchmarks.noop:app", "--port", str(port)]
    command += ["--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=HERE.parent, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_port(port, server)
            run_wrk(f"http://127.0.0.1:{port}", 2, connections)  # warm-up
            return run_wrk(f"http://127.0.0.1:{port}", seconds, connections)
        finally:
            server.terminate()
            server.wait(30)


def _wait_port(port: int, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.poll() is not None:
            raise RuntimeError("the no-op server exited")
        try:
            httpx.post(f"http://127.0.0.1:{port}/v1/slates", json={}, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise TimeoutError("the no-op server did not answer")


def slatebandit(
    root: str, prepared: Path, work: Path, args: argparse.Namespace, name: str
) -> dict[str, float]:
    data = work / f"data-{name}"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(prepared, data)
    server = Server(data, args.workers, work / f"{name}.log", root=root)
    try:
        server.wait_ready(600)
        run_wrk(server.url, 3, args.connections)  # warm-up: caches, first model poll
        return run_wrk(server.url, args.seconds, args.connections)
    finally:
        server.stop()


def prepare(work: Path, items: int) -> Path:
    """A data directory holding the demo catalog and its saved index."""
    prepared = work / "prepared"
    server = Server(prepared, 1, work / "prepare.log", extra=["--demo", "--demo-items", str(items)])
    try:
        server.wait_ready(1200)
    finally:
        server.stop()
    return prepared


def checkout(revision: str, work: Path) -> str:
    """A source tree of ``revision`` of this repository (a detached git worktree)."""
    tree = work / f"rev-{revision}"
    subprocess.run(
        ["git", "-C", package_root(), "worktree", "add", "--detach", str(tree), revision],
        check=True,
        capture_output=True,
    )
    return str(tree)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--before", help="also measure this git revision (the old code)")
    parser.add_argument("--after", help="measure this git revision, not the working tree")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")

    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="slatebandit-throughput-") as tmp:
        work = Path(tmp)
        say(f"preparing {args.items:,} demo items and their index")
        prepared = prepare(work, args.items)
        trees = {"slatebandit": package_root()}
        if args.after:
            trees = {f"slatebandit ({args.after})": checkout(args.after, work)}
        if args.before:
            trees = {f"before ({args.before})": checkout(args.before, work), **trees}
        try:
            for round_ in range(args.rounds):
                say(f"round {round_ + 1}: no-op route")
                runs.setdefault("no-op", []).append(
                    noop(args.workers, args.seconds, args.connections, work / "noop.log")
                )
                for i, (name, root) in enumerate(trees.items()):
                    say(f"round {round_ + 1}: {name}")
                    result = slatebandit(root, prepared, work, args, str(i))
                    runs.setdefault(name, []).append(result)
        finally:
            if args.before or args.after:
                subprocess.run(
                    ["git", "-C", package_root(), "worktree", "prune"], capture_output=True
                )
    report = summarise(runs)
    report["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    report["source"] = source_info()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Each server's median round, and its rate as a share of the no-op route's."""
    out: dict[str, Any] = {"servers": {}}
    for name, results in runs.items():
        ordered = sorted(results, key=lambda r: r["requests_per_s"])
        out["servers"][name] = {**ordered[len(ordered) // 2], "rounds": results}
    base = out["servers"]["no-op"]["requests_per_s"]
    for result in out["servers"].values():
        result["share_of_noop"] = round(result["requests_per_s"] / base, 4)
    return out


def table(report: dict[str, Any]) -> str:
    lines = [
        "| server | requests/s | p50 ms | p99 ms | share of no-op |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in report["servers"].items():
        lines.append(
            f"| {name} | {r['requests_per_s']:,.0f} | {r.get('p50_ms', float('nan')):.1f} | "
            f"{r.get('p99_ms', float('nan')):.1f} | {100 * r['share_of_noop']:.1f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
