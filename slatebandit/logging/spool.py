"""The spool: append-only local files of what was acknowledged while the database was away.

When the database cannot be reached, serving still answers (``recommender.outage``): each decision,
reward and event it acknowledges is appended to a *segment* here and fsync'd before the 2xx,
then shipped into the database when it returns. A segment belongs to one process, which holds
an exclusive ``flock`` on it while it may still append; a segment nobody holds is finished once
it has been shipped, and is deleted.

A record is one frame: its length and CRC32 (little-endian uint32 each), then its msgpack body.
A kill in the middle of an append leaves a torn frame at the end: it fails its length or CRC
check and is ignored, and it was never acknowledged. A failed append is cut off again before
the error reaches the caller, so later records never sit behind a torn one.

How far a segment has been shipped is stored in the database (``spool_progress``), in the
transaction that ships its records: shipping resumes where it stopped and never ships a record
twice.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack
from sqlalchemy import Connection, delete, insert, select, update

from slatebandit.logging.decisions import DecisionRecord, ShownSlot
from slatebandit.logging.schema import spool_progress
from slatebandit.logging.writer import Batcher

FRAME = struct.Struct("<II")  # body length, CRC32 of the length and the body
FRAME_LENGTH, FRAME_CRC = struct.Struct("<I"), struct.Struct("<I")
SUFFIX = ".spool"
DRAFT = ".draft"  # a segment being created, not yet locked
MAX_RECORD = 16 * 1024 * 1024  # a length above this is a torn or foreign frame


class SpoolFull(OSError):
    """The spool has reached ``SLATEBANDIT_SPOOL_MAX_MB``."""


@dataclass(frozen=True)
class SpooledReward:
    """A reward as the API received it; its decision is looked up by event id when shipped."""

    event_id: str
    item_key: int
    type: str
    reward: float
    created_at: float
    value: float | None = None  # a purchase's amount (``rewards.value``)


@dataclass(frozen=True)
class SpooledEvent:
    user_id: str
    item_key: int
    type: str
    created_at: float
    ref: str  # the id it is stored under (``events.ref``): it is stored once


Record = DecisionRecord | SpooledReward | SpooledEvent
_KINDS: dict[str, type] = {"d": DecisionRecord, "r": SpooledReward, "e": SpooledEvent}
_TAGS = {kind: tag for tag, kind in _KINDS.items()}


def encode(record: Record) -> bytes:
    return msgpack.packb({"k": _TAGS[type(record)], **asdict(record)}, use_bin_type=True)


def decode(body: bytes) -> Record | None:
    """The record in ``body``, or None if this version cannot read it (a whole frame that
    another version wrote, say): the shipper counts it and goes on."""
    try:
        fields = msgpack.unpackb(body, raw=False)
        kind = _KINDS[fields.pop("k")]
        known = {f.name for f in dataclasses.fields(kind)}
        fields = {name: value for name, value in fields.items() if name in known}
        if kind is DecisionRecord:
            fields["shown"] = tuple(ShownSlot(**slot) for slot in fields["shown"])
        return kind(**fields)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - any malformed content
        return None


def frame(body: bytes) -> bytes:
    length = FRAME_LENGTH.pack(len(body))
    return length + FRAME_CRC.pack(zlib.crc32(body, zlib.crc32(length))) + body


def read(path: Path, start: int, end: int | None = None) -> Iterator[tuple[int, Record | None]]:
    """The whole records of ``path`` from byte ``start`` (to ``end``), each with the offset just
    past it, read frame by frame; a torn or corrupt frame ends the segment. A record this
    version cannot decode comes as None."""
    with path.open("rb") as handle:
        handle.seek(start)
        at = start
        while end is None or at + FRAME.size <= end:
            header = handle.read(FRAME.size)
            if len(header) < FRAME.size:
                return
            length, crc = FRAME.unpack(header)
            if not 0 < length <= MAX_RECORD or (end is not None and at + FRAME.size + length > end):
                return
            body = handle.read(length)
            if len(body) < length or zlib.crc32(body, zlib.crc32(header[:4])) != crc:
                return
            at += FRAME.size + length
            yield at, decode(body)


def readable_end(path: Path, start: int) -> int:
    """The offset just past the last whole record of ``path`` (``start`` if there is none)."""
    end = start
    for offset, _ in read(path, start):
        end = offset
    return end


def segments(directory: Path) -> list[Path]:
    """The segments in ``directory``, oldest first (names start with their creation time)."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"*{SUFFIX}"))


def spool_bytes(directory: Path) -> int:
    total = 0
    for path in segments(directory):
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # shipped and deleted meanwhile
            pass
    return total


def spooling_since(directory: Path) -> float | None:
    """When the oldest segment in ``directory`` was started (epoch seconds, from its name), or
    None when there is none: every unshipped record is at least that recent."""
    for path in segments(directory):
        try:
            return int(path.name.split("-", 1)[0]) / 1e9
        except ValueError:  # not a name Segment gives: count it from the start of time
            return 0.0
    return None


def is_held(path: Path) -> bool:
    """Whether a process still holds ``path`` open for appending (it may grow)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also drops the lock if it was taken
    return False


class Segment:
    """This process's open segment: created on first use, appended to, fsync'd, closed."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:40]
        self.path = directory / f"{time.time_ns():020d}-{host}-{os.getpid()}{SUFFIX}"
        # Locked under a name no shipper lists, then renamed: a shipper never sees it unheld.
        draft = self.path.with_name(self.path.name + DRAFT)
        self._fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # held until close(): never deleted meanwhile
            draft.rename(self.path)
            _fsync_directory(directory)  # the name itself survives a power cut
        except OSError:
            os.close(self._fd)
            raise

    def append(self, bodies: list[bytes]) -> None:
        """Write and fsync ``bodies``. If that fails the caller closes the segment: whatever
        part was written stays as the segment's torn tail, and nothing follows it."""
        data = b"".join(frame(body) for body in bodies)
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(f"spool: short write ({written} of {len(data)} bytes)")
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class SpoolWriter(Batcher):
    """Appends records to this process's segment; one fsync serves each batch of callers."""

    def __init__(self, directory: Path, *, max_bytes: int, max_batch: int = 512) -> None:
        super().__init__(max_batch=max_batch, name="spool-writer")
        self.directory = directory
        self.max_bytes = max_bytes
        self.appended = 0  # records made durable here, for /healthz
        self._segment: Segment | None = None

    @property
    def holds_segment(self) -> bool:
        return self._segment is not None

    async def close_segment(self) -> None:
        """Close the open segment after what is queued: a shipper may then finish it."""
        await self.submit(_CLOSE)

    def _commit(self, units: list[Any]) -> list[tuple[bool, Any]]:
        records = [unit for unit in units if unit is not _CLOSE]
        failure: Exception | None = None
        try:
            if records:
                self._append(records)
        except Exception as exc:  # noqa: BLE001 - each caller gets it (a 503, or logged: none)
            failure = exc if isinstance(exc, OSError) else OSError(f"spool: {exc!r}")
        if (failure is not None or len(records) < len(units)) and self._segment is not None:
            self._segment.close()  # a failed segment is not appended to again
            self._segment = None
        return [
            (True, None) if unit is _CLOSE or failure is None else (False, failure)
            for unit in units
        ]

    def _append(self, records: list[Record]) -> None:
        bodies = [encode(record) for record in records]
        size = sum(FRAME.size + len(body) for body in bodies)
        if spool_bytes(self.directory) + size > self.max_bytes:
            raise SpoolFull(f"spool: {self.directory} is full (SLATEBANDIT_SPOOL_MAX_MB)")
        if self._segment is None:
            self._segment = Segment(self.directory)
        self._segment.append(bodies)
        self.appended += len(records)

    async def stop(self) -> None:
        await super().stop()
        if self._segment is not None:
            self._segment.close()
            self._segment = None


_CLOSE = object()


def progress(conn: Connection, segment: str) -> tuple[int, int]:
    """How far ``segment``'s decisions and its other records have been shipped (bytes)."""
    found = conn.execute(
        select(spool_progress.c.decisions, spool_progress.c.others).where(
            spool_progress.c.segment == segment
        )
    ).first()
    return (0, 0) if found is None else (int(found[0]), int(found[1]))


def set_progress(conn: Connection, segment: str, decisions: int, others: int) -> None:
    where = spool_progress.c.segment == segment
    if (
        conn.execute(
            update(spool_progress).where(where).values(decisions=decisions, others=others)
        ).rowcount
        == 0
    ):
        conn.execute(
            insert(spool_progress).values(segment=segment, decisions=decisions, others=others)
        )


def shipping(conn: Connection) -> bool:
    """Whether some segment's decisions have shipped but not yet all its rewards and events:
    a learner waits, so it never learns a decision before its rewards arrive."""
    behind = select(spool_progress.c.segment).where(
        spool_progress.c.others < spool_progress.c.decisions
    )
    return conn.execute(behind.limit(1)).first() is not None


def forget(conn: Connection, segment: str) -> None:
    """Drop a deleted segment's progress row (its name is never used again)."""
    conn.execute(delete(spool_progress).where(spool_progress.c.segment == segment))


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
