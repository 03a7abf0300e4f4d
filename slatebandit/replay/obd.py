"""Import one campaign of the Open Bandit Dataset into the decision log.

The Open Bandit Dataset (Saito et al. 2021, ZOZO Research) logs a fashion site's 3-item widget:
each row is one shown (item, position) with its click and the probability the logging policy
(uniform random, or Bernoulli Thompson Sampling) gave it. A campaign directory holds the log
(``all.csv``, ``men.csv``, ..., gzipped or not) and ``item_context.csv``.

Each row becomes one decision with one slot, so ``replay`` runs on it unchanged:
    candidates  the campaign's items (``obd-<id>``), their hashed categoricals as category,
                brand and attribute, the standardised numeric feature as a rounded attribute
    context     the four hashed user features and the widget position
    bands       each candidate's popularity band from the clicks logged before the row, as
                the catalog computes it (log2 of 1 + clicks), so ``popular`` can be replayed
    slot 0      the shown item with its logged propensity; a click is a reward of 1
    exploration "external": replay cannot recompute the logger, it uses the logged propensity
The rows carry no slate id joining the three positions of one impression, so positions are
decisions of their own. The user-item affinity columns are not imported: the scorer's item
features come from item revisions, and an affinity is a feature of the (user, item) pair.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, insert, select
from tqdm import tqdm

from slatebandit.bandit import FEATURE_SPEC_VERSION
from slatebandit.errors import InvalidInput
from slatebandit.items import Item
from slatebandit.logging import DecisionPayload, DecisionRecord, ShownSlot, upsert_items
from slatebandit.logging.schema import decisions, rewards

ITEM_CONTEXT = "item_context.csv"
BATCH = 5_000
USER_FEATURES = [f"user_feature_{i}" for i in range(4)]
LOG_COLUMNS = {"timestamp", "item_id", "position", "click", "propensity_score", *USER_FEATURES}


@dataclass(frozen=True)
class Imported:
    campaign: str
    items: int
    decisions: int
    clicks: int


def find_log(directory: Path) -> Path:
    """The campaign's log: the one CSV (or .csv.gz) in ``directory`` beside its item context."""
    if not (directory / ITEM_CONTEXT).is_file():
        raise InvalidInput(f"{directory}: no {ITEM_CONTEXT}", field="dir")
    candidates = [*directory.glob("*.csv"), *directory.glob("*.csv.gz")]
    logs = sorted(p for p in candidates if p.name != ITEM_CONTEXT)
    if len(logs) != 1:
        found = ", ".join(p.name for p in logs) or "none"
        raise InvalidInput(
            f"{directory}: expected one log CSV beside {ITEM_CONTEXT}, found {found}", field="dir"
        )
    return logs[0]


def import_obd(engine: Engine, directory: Path, *, progress: bool = True) -> Imported:
    log = find_log(directory)
    resolved = directory.resolve()  # "bts" and "data/obd/bts" are one campaign
    campaign = f"{resolved.parent.name}/{resolved.name}".strip("/")
    items = _items(directory / ITEM_CONTEXT)
    known = {int(item.item_id.removeprefix("obd-")) for item in items}
    # Validate the whole log first: a bad row anywhere writes nothing.
    n_rows = 0
    for index, row in tqdm(_log_rows(log), desc="validate", unit="row", disable=not progress):
        if row["item"] not in known:
            raise InvalidInput(
                f"{log.name}:{index + 2}: item_id {row['item']} is not in {ITEM_CONTEXT}",
                field="item_id",
            )
        n_rows += 1
    with engine.begin() as conn:
        done = [
            conn.execute(select(decisions.c.id).where(decisions.c.event_id == event_id)).first()
            for event_id in (_event_id(campaign, 0), _event_id(campaign, n_rows - 1))
        ]
        if all(done):
            raise InvalidInput(f"{campaign} is already imported into this database", field="dir")
        if any(done):
            raise InvalidInput(
                f"an earlier import of {campaign} stopped part-way: import into a new database",
                field="dir",
            )
        pairs = upsert_items(conn, items)  # (key, rev) per item, in the file's order
    # Every decision's candidates are all the campaign's items, in the file's order.
    candidate_revs = np.array([rev for _, rev in pairs], dtype=np.uint32)
    column_of = {key: column for column, (key, _) in enumerate(pairs)}
    key_of = {
        int(item.item_id.removeprefix("obd-")): key
        for item, (key, _) in zip(items, pairs, strict=True)
    }
    total = clicks = 0
    clicks_so_far = np.zeros(len(candidate_revs))
    rows = _log_rows(log)
    with tqdm(total=n_rows, desc=f"import {campaign}", unit="row", disable=not progress) as bar:
        while batch := [r for _, r in zip(range(BATCH), rows, strict=False)]:
            records, clicked = [], []
            for index, row in batch:
                key = key_of[row["item"]]
                bands = np.minimum(np.log2(1.0 + clicks_so_far), 15).astype(np.uint8) << 4
                column = column_of[key]
                records.append(_record(campaign, index, row, key, column, candidate_revs, bands))
                clicked.append(row["click"])
                clicks_so_far[column] += row["click"]
            with engine.begin() as conn:
                shown = DecisionRecord.write_many(conn, records)
                rows_clicked = [
                    {
                        "decision_id": s.decision_id,
                        "item_key": s.item_keys[0],
                        "type": "click",
                        "reward": 1.0,
                        "created_at": r.created_at,
                    }
                    for s, r, c in zip(shown, records, clicked, strict=True)
                    if c
                ]
                if rows_clicked:
                    conn.execute(insert(rewards), rows_clicked)
            total += len(records)
            clicks += len(rows_clicked)
            bar.update(len(records))
    return Imported(campaign, len(items), total, clicks)


def _items(path: Path) -> list[Item]:
    out = []
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            try:
                out.append(
                    Item(
                        item_id=f"obd-{int(row['item_id'])}",
                        title=f"OBD item {int(row['item_id'])}",
                        category=row["item_feature_1"][:12],
                        brand=row["item_feature_2"][:12],
                        attributes={
                            "f0": round(float(row["item_feature_0"]), 1),
                            "f3": row["item_feature_3"][:12],
                        },
                    )
                )
            except (KeyError, ValueError) as exc:
                raise InvalidInput(f"{path.name}:{line}: {exc}", field="item_context") from None
    if not out:
        raise InvalidInput(f"{path}: no items", field="item_context")
    return out


def _log_rows(path: Path) -> Iterator[tuple[int, dict]]:  # type: ignore[type-arg]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = LOG_COLUMNS - set(reader.fieldnames or ())
        if missing:
            raise InvalidInput(f"{path.name}: missing columns {sorted(missing)}", field="log")
        for index, row in enumerate(reader):
            try:
                propensity = float(row["propensity_score"])
                if not 0 < propensity <= 1:
                    raise ValueError(f"propensity_score {propensity} is not in (0, 1]")
                yield (
                    index,
                    {
                        "at": datetime.fromisoformat(row["timestamp"]).timestamp(),
                        "item": int(row["item_id"]),
                        "position": int(row["position"]),
                        "click": int(row["click"]) == 1,
                        "propensity": propensity,
                        "user": {name: row[name][:12] for name in USER_FEATURES},
                    },
                )
            except ValueError as exc:
                raise InvalidInput(f"{path.name}:{index + 2}: {exc}", field="log") from None


def _event_id(campaign: str, index: int) -> str:
    return hashlib.blake2b(f"obd/{campaign}/{index}".encode(), digest_size=16).hexdigest()


def _record(
    campaign: str,
    index: int,
    row: dict,  # type: ignore[type-arg]
    key: int,
    column: int,
    candidate_revs: np.ndarray,
    bands: np.ndarray,
) -> DecisionRecord:
    n = len(candidate_revs)
    payload = DecisionPayload(
        context={"c": {**row["user"], "position": row["position"]}, "u": []},
        candidate_revs=candidate_revs,
        candidate_flags=np.zeros(n, dtype=np.uint8),
        candidate_dynamic=bands,
        scores=np.zeros(n, dtype=np.float16),
        layout="e",
        exploration={"kind": "external", "param": None},
        chosen=np.array([column], dtype=np.uint16),
        feature_spec=FEATURE_SPEC_VERSION,
    )
    return DecisionRecord(
        event_id=_event_id(campaign, index),
        created_at=row["at"],
        user_id="obd-" + hashlib.blake2b(repr(row["user"]).encode(), digest_size=8).hexdigest(),
        policy=f"obd:{campaign}",
        model_version=0,
        payload=payload.encode(),
        shown=(ShownSlot(0, key, row["propensity"], "exploit", "obd", 0.0),),
    )
