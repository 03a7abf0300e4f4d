"""hnswlib against usearch on the vectors the service indexes: which library serves the shared,
read-only per-machine index (issue 19)?

    python -m benchmarks.ann [--items 100000 1000000] [--queries 1000] [--ef 64]

Vectors are the service's own: demo items (``retrieval/demo.py``) embedded by ``ContentEmbedder``
and blended to INDEX_DIM as the index holds them (no interactions yet, so the collaborative part
is zero). Queries are half item vectors (``neighbours_of``) and half session vectors (the
normalised sum of three items). For each library and storage type it measures:

- build: items/s adding every vector with 2 threads (M=16 for both);
- recall@10 at serving ef against brute force, tie-aware as ``tests/test_index.py`` counts it
  (demo items repeat, so many vectors tie);
- QPS of one thread, one query at a time, as serving asks;
- load: seconds until a fresh process can answer, and its RSS and PSS after the queries
  (``/proc/PID/smaps_rollup``); then two processes holding the same file at once, whose PSS
  shows what they really share (RSS counts shared file pages once per process).

Figures go to stdout and to benchmarks/results/ann.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import proc_mib

RESULTS = Path(__file__).parent / "results" / "ann.json"
M, EF_CONSTRUCTION = 16, 200
# (name, library, storage, construction breadth)
CONFIGS = [
    ("hnswlib", "hnswlib", "f32", EF_CONSTRUCTION),
    ("usearch-f32", "usearch", "f32", 128),
    ("usearch-f16", "usearch", "f16", 128),
    ("usearch-bf16", "usearch", "bf16", 128),
    ("usearch-i8", "usearch", "i8", 128),
    ("hnswlib-efc100", "hnswlib", "f32", 100),
    ("usearch-f16-efc64", "usearch", "f16", 64),
    ("usearch-bf16-efc64", "usearch", "bf16", 64),
]


def demo_vectors(n: int, cache: Path) -> np.ndarray:
    """The blended index vectors of ``n`` demo items, cached between runs."""
    path = cache / f"demo-vectors-{n}.npy"
    if path.exists():
        return np.load(path)
    from slatebandit.retrieval import ContentEmbedder, item_tokens, title_words
    from slatebandit.retrieval.collab import COLLAB_DIM, blend
    from slatebandit.retrieval.demo import demo_items

    embedder = ContentEmbedder()
    parts = []
    batch: list[Any] = []
    for item in demo_items(n):
        tokens = item_tokens(item.category, item.brand, item.price, item.attributes)
        batch.append((tokens, title_words(item.title)))
        if len(batch) == 50_000:
            parts.append(embedder.embed_many(batch))
            batch = []
    if batch:
        parts.append(embedder.embed_many(batch))
    content = np.vstack(parts)
    out = blend(content, np.zeros((n, COLLAB_DIM), np.float32), np.zeros(n))
    np.save(path, out)
    return out


def queries_of(data: np.ndarray, count: int, seed: int = 3) -> np.ndarray:
    """Half item vectors; half sessions: an item plus two of its 100 nearest, summed and
    normalised (a shopper browses related items, not three random ones)."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(data), count, replace=False)
    items = data[picked[: count // 2]]
    seeds = data[picked[count // 2 :]]
    near = np.full((len(seeds), 100), -np.inf, dtype=np.float32), np.zeros((len(seeds), 100), int)
    for start in range(0, len(data), 100_000):
        sims = seeds @ data[start : start + 100_000].T
        both = np.hstack([near[0], sims])
        keys = np.hstack(
            [near[1], np.arange(start, start + sims.shape[1])[None, :].repeat(len(seeds), 0)]
        )
        top = np.argpartition(-both, 99, axis=1)[:, :100]
        near = np.take_along_axis(both, top, 1), np.take_along_axis(keys, top, 1)
    pick = near[1][np.arange(len(seeds))[:, None], rng.integers(0, 100, (len(seeds), 2))]
    trios = seeds + data[pick].sum(axis=1)
    sessions = trios / np.linalg.norm(trios, axis=1, keepdims=True)
    return np.vstack([items, sessions]).astype(np.float32)


def true_kth(data: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """The k-th best inner product of each query over all of ``data`` (brute force)."""
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for start in range(0, len(data), 100_000):
        sims = queries @ data[start : start + 100_000].T
        both = np.hstack([best, sims])
        best = -np.partition(-both, k - 1, axis=1)[:, :k]
    return best.min(axis=1)


def recall(data: np.ndarray, queries: np.ndarray, labels: np.ndarray, kth: np.ndarray) -> float:
    """Tie-aware recall@k: a returned item counts if it is as close as the true k-th."""
    k = labels.shape[1]
    sims = np.einsum("qd,qkd->qk", queries, data[np.clip(labels, 0, len(data) - 1)])
    good = (sims >= kth[:, None] - 1e-5) & (labels >= 0)
    return float(good.sum() / (len(queries) * k))


def build(name: str, library: str, storage: str, ef_c: int, data: np.ndarray, path: Path) -> float:
    """Build with 2 threads and save to ``path``; returns items/s of the build alone."""
    keys = np.arange(len(data))
    started = time.perf_counter()
    if library == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=data.shape[1])
        index.init_index(max_elements=len(data), M=M, ef_construction=ef_c, random_seed=100)
        index.add_items(data, keys, num_threads=2)
        seconds = time.perf_counter() - started
        index.save_index(str(path))
    else:
        from usearch.index import Index

        index = Index(
            ndim=data.shape[1], metric="ip", dtype=storage, connectivity=M, expansion_add=ef_c
        )
        index.add(keys.astype(np.uint64), data, threads=2)
        seconds = time.perf_counter() - started
        index.save(str(path))
    return len(data) / seconds


def memory() -> dict[str, float]:
    """RSS and PSS of this process in MiB, from smaps_rollup."""
    fields = ("Rss", "Pss", "Pss_File", "Pss_Anon")
    found = proc_mib("/proc/self/smaps_rollup", fields)
    return {name.lower() + "_mib": round(mib, 1) for name, mib in found.items()}


def serve(args: argparse.Namespace) -> None:
    """Child process: load the file, answer the queries one at a time, report, and (when told
    to) wait for a line on stdin before reading memory, so two of them overlap."""
    queries = np.load(args.query_file)
    started = time.perf_counter()
    if args.library == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=queries.shape[1])
        index.load_index(args.index)
        index.set_ef(args.ef)
        load = time.perf_counter() - started

        def ask(q: np.ndarray) -> np.ndarray:
            return index.knn_query(q, k=10, num_threads=1)[0][0]
    else:
        from usearch.index import Index

        index = Index.restore(args.index, view=True)
        index.expansion_search = args.ef
        load = time.perf_counter() - started

        def ask(q: np.ndarray) -> np.ndarray:
            found = index.search(q, 10, threads=1).keys
            return np.pad(found.astype(np.int64), (0, 10 - len(found)), constant_values=-1)

    labels = np.empty((len(queries), 10), dtype=np.int64)
    started = time.perf_counter()
    for i, q in enumerate(queries):
        labels[i] = ask(q)
    qps = len(queries) / (time.perf_counter() - started)
    np.save(args.labels, labels)
    report: dict[str, Any] = {"load_s": round(load, 3), "qps": round(qps), **memory()}
    if args.wait:
        print(json.dumps({"ready": True}), flush=True)
        sys.stdin.readline()
        report.update({"together_" + k: v for k, v in memory().items()})
    print(json.dumps(report), flush=True)


def _child(library: str, index: Path, queries: Path, labels: Path, ef: int, wait: bool) -> Any:
    command = [sys.executable, "-m", "benchmarks.ann", "--serve", library, "--index", str(index)]
    command += ["--query-file", str(queries), "--labels", str(labels), "--ef", str(ef)]
    return subprocess.Popen(
        [*command, *(["--wait"] if wait else [])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def measure(n: int, args: argparse.Namespace, work: Path, rows: list[dict[str, Any]]) -> None:
    """Append a row per library to ``rows``, writing the results file after each."""
    data = demo_vectors(n, work)
    queries = queries_of(data, args.queries)
    kth = true_kth(data, queries)
    query_file = work / "queries.npy"
    np.save(query_file, queries)
    for name, library, storage, ef_c in CONFIGS:
        if args.only and name not in args.only:
            continue
        path = work / f"{name}-{n}.index"
        rate = build(name, library, storage, ef_c, data, path)
        os.sync()
        # Alone: one process loads the file and serves.
        child = _child(library, path, query_file, work / "labels.npy", args.ef, wait=False)
        alone = json.loads(child.communicate()[0].strip().splitlines()[-1])
        labels = np.load(work / "labels.npy")
        half = len(queries) // 2
        got = recall(data, queries, labels, kth)
        by_item = recall(data, queries[:half], labels[:half], kth[:half])
        by_session = recall(data, queries[half:], labels[half:], kth[half:])
        # Two at once, holding the same file: what a machine with two workers pays.
        pair = [
            _child(library, path, query_file, work / f"labels{i}.npy", args.ef, wait=True)
            for i in range(2)
        ]
        for child in pair:
            child.stdout.readline()  # ready
        reports = []
        for child in pair:
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in pair:
            reports.append(json.loads(child.communicate()[0].strip().splitlines()[-1]))
        row = {
            "items": n,
            "library": name,
            "recall_at_10": round(got, 4),
            "recall_item_queries": round(by_item, 4),
            "recall_session_queries": round(by_session, 4),
            "qps_1_thread": alone["qps"],
            "build_items_per_s": round(rate),
            "file_mib": round(path.stat().st_size / 2**20, 1),
            "load_s": alone["load_s"],
            "rss_mib": alone["rss_mib"],
            "pss_mib": alone["pss_mib"],
            "two_procs_rss_mib": round(sum(r["together_rss_mib"] for r in reports), 1),
            "two_procs_pss_mib": round(sum(r["together_pss_mib"] for r in reports), 1),
        }
        rows.append(row)
        print(_line(row), flush=True)
        _write(args, rows)
        path.unlink()


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['items']:>9,} {row['library']:<12} recall {row['recall_at_10']:.4f} "
        f"({row['recall_item_queries']:.3f}/{row['recall_session_queries']:.3f}) "
        f"qps {row['qps_1_thread']:>6,} build {row['build_items_per_s']:>7,}/s "
        f"file {row['file_mib']:>7.1f} MiB load {row['load_s']:>6.3f} s "
        f"rss {row['rss_mib']:>7.1f} pss {row['pss_mib']:>7.1f} | two procs "
        f"rss {row['two_procs_rss_mib']:>7.1f} pss {row['two_procs_pss_mib']:>7.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--ef", type=int, default=64, help="serving search breadth")
    parser.add_argument("--only", nargs="*", help="library names to run (default: all)")
    parser.add_argument("--work", type=Path, help="where vectors and index files go")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # child mode: the library
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    parser.add_argument("--query-file", help=argparse.SUPPRESS)
    parser.add_argument("--wait", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        args.library = args.serve
        serve(args)
        return
    work = args.work or Path(tempfile.gettempdir()) / "slatebandit-ann"
    work.mkdir(parents=True, exist_ok=True)
    args.loadavg_before = [round(x, 2) for x in os.getloadavg()]
    rows: list[dict[str, Any]] = []
    for n in args.items:
        measure(n, args, work, rows)
    print(f"wrote {args.out}")


def _write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    result = {
        "ef": args.ef,
        "m": M,
        "queries": args.queries,
        "cores": os.cpu_count(),
        "loadavg_before": args.loadavg_before,
        "loadavg_now": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
