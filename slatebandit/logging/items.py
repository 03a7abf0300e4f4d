"""Catalog records: validation of an item, upserts and deletes that bump revisions, change feeds."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from tqdm import tqdm

from slatebandit.items import Item
from slatebandit.logging.records import pack
from slatebandit.logging.schema import item_revisions, items

LOAD_BATCH = 5_000  # items per transaction when loading a catalog


def snapshot(item: Item) -> bytes:
    """The fields features are built from, frozen into an item revision."""
    return pack(item.model_dump(exclude={"item_id"}))


def upsert_items(conn: Connection, batch: Sequence[Item]) -> list[tuple[int, int]]:
    """Insert or update ``batch``; returns (key, rev) per distinct item, in first-seen order."""
    now = time.time()
    latest = {item.item_id: item for item in batch}  # a repeated item_id: the last one wins
    ids = list(latest)
    keys: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        keys.update(
            conn.execute(
                select(items.c.item_id, items.c.key).where(items.c.item_id.in_(chunk))
            ).all()
        )

    existing = [latest[i] for i in ids if i in keys]
    fresh = [latest[i] for i in ids if i not in keys]
    if existing:
        conn.execute(
            update(items).where(items.c.key == bindparam("k")),
            [_row(item, now) | {"k": keys[item.item_id]} for item in existing],
        )
    if fresh:
        rows = conn.execute(
            insert(items).returning(items.c.item_id, items.c.key, sort_by_parameter_order=True),
            [_row(item, now) | {"rev": 0, "created_at": now} for item in fresh],
        )
        keys.update(rows.all())
    return _new_revisions(conn, [(keys[i], snapshot(latest[i])) for i in ids], now)


def load_items(
    engine: Engine, stream: Iterable[Item], *, total: int | None = None, desc: str = "items"
) -> int:
    """Upsert a stream of items, one transaction per ``LOAD_BATCH``, with a progress bar."""
    loaded = 0
    stream = iter(stream)
    with tqdm(total=total, desc=desc, unit="item", mininterval=1.0) as bar:
        while batch := list(itertools.islice(stream, LOAD_BATCH)):
            with engine.begin() as conn:
                upsert_items(conn, batch)
            loaded += len(batch)
            bar.update(len(batch))
    return loaded


def delete_item(conn: Connection, item_id: str) -> tuple[int, int] | None:
    """Mark ``item_id`` deleted; returns (key, rev), or None if there is no such live item."""
    key = conn.execute(
        select(items.c.key).where(items.c.item_id == item_id, items.c.deleted.is_(False))
    ).scalar()
    if key is None:
        return None
    now = time.time()
    conn.execute(
        update(items)
        .where(items.c.key == key)
        .values(deleted=True, available=False, updated_at=now)
    )
    return _new_revisions(conn, [(key, pack({"deleted": True}))], now)[0]


def _new_revisions(
    conn: Connection, snaps: list[tuple[int, bytes]], now: float
) -> list[tuple[int, int]]:
    revs = (
        conn.execute(
            insert(item_revisions).returning(item_revisions.c.rev, sort_by_parameter_order=True),
            [{"key": key, "snapshot": snap, "created_at": now} for key, snap in snaps],
        )
        .scalars()
        .all()
    )
    conn.execute(
        update(items).where(items.c.key == bindparam("k")).values(rev=bindparam("r")),
        [{"k": key, "r": rev} for (key, _), rev in zip(snaps, revs, strict=True)],
    )
    return [(key, rev) for (key, _), rev in zip(snaps, revs, strict=True)]


def _row(item: Item, now: float) -> dict[str, Any]:
    return item.model_dump() | {"deleted": False, "updated_at": now}


CATALOG_COLUMNS = (
    items.c.key,
    items.c.item_id,
    items.c.title,
    items.c.category,
    items.c.brand,
    items.c.price,
    items.c.attributes,
    items.c.available,
    items.c.deleted,
    items.c.rev,
    items.c.created_at,
)


def changes_since(conn: Connection, rev: int, *, chunk: int = 20_000) -> Iterator[Sequence[Any]]:
    """Items whose latest revision is newer than ``rev``, oldest change first, in chunks."""
    while True:
        rows = conn.execute(
            select(*CATALOG_COLUMNS).where(items.c.rev > rev).order_by(items.c.rev).limit(chunk)
        ).all()
        if not rows:
            return
        yield rows
        rev = rows[-1].rev


def latest_rev(conn: Connection) -> int:
    return conn.execute(select(func.coalesce(func.max(items.c.rev), 0))).scalar_one()


def count_live_items(conn: Connection) -> int:
    return conn.execute(select(func.count()).where(items.c.deleted.is_(False))).scalar_one()


_SHOWN = (
    items.c.item_id,
    items.c.title,
    items.c.category,
    items.c.brand,
    items.c.price,
    items.c.available,
    items.c.attributes,
    items.c.updated_at,
)


def search_items(conn: Connection, text: str, limit: int) -> list[dict[str, Any]]:
    """Live items whose id or title holds ``text`` (any case), by id; at most ``limit``."""
    query = select(*_SHOWN).where(items.c.deleted.is_(False))
    if text:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            items.c.item_id.ilike(pattern, escape="\\") | items.c.title.ilike(pattern, escape="\\")
        )
    rows = conn.execute(query.order_by(items.c.item_id).limit(limit))
    return [dict(row._mapping) for row in rows]


def get_items(conn: Connection, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The fields of the live ones among ``item_ids``, by id."""
    rows = conn.execute(
        select(*_SHOWN).where(items.c.item_id.in_(list(item_ids)), items.c.deleted.is_(False))
    )
    return {row.item_id: dict(row._mapping) for row in rows}
