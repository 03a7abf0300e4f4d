"""Compact msgpack encodings of what a decision logs.

A decision payload holds, for replay: the context features the scorer saw, the candidates as
item revisions (uint32), each candidate's generator flags (one byte), the slot layout and the
exploration parameters. 200 candidates take about 1.2 KB before compression. A slate
that merchandising rules or rotation shaped adds the score shifts (4 bytes per candidate, or
6 per candidate moved when few are) and rule marks (1 byte per candidate), and the id of the
rule set in force.

The candidates' scores are not kept (they were until payload version 2's last release, and
are still read): they follow from the model version and the features, which are, nothing
read them, and at 2 bytes a candidate they were a fifth of a decision on PostgreSQL. The
shown slots keep their items' scores.

A payload is compressed with Zstandard (level 1: about 15 us to compress, 6 to decompress;
zlib took seven times as long for the same size), which halves it; one that starts with
msgpack's map byte instead is an uncompressed one from before.

Since payload version 3 the context is packed on its own, inside the payload: unpacking its
strings was 60% of decoding a payload, and replay reads it only for the targets that score
(``context_of`` unpacks it; version 2 payloads hold it unpacked, and are still read).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import zstandard

PAYLOAD_VERSION = 3
READABLE_VERSIONS = (2, 3)
PINNED_MARK, PROMOTABLE_MARK = 1, 2  # bits of a candidate's rule marks
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_codecs = threading.local()  # Zstandard's (de)compressors are not for two threads at once


@dataclass(frozen=True)
class DecisionPayload:
    context: dict[str, Any]  # request context and user-state features, as the scorer saw them
    candidate_revs: np.ndarray  # uint32, one item revision per candidate, in candidate order
    candidate_flags: np.ndarray  # uint8 bitmask of the generators that proposed each candidate
    candidate_dynamic: np.ndarray  # uint8 popularity and age bands (pop << 4 | age)
    scores: np.ndarray | None  # float16 predicted reward per candidate (old payloads only)
    layout: str  # one letter per slot: e(xploit), x (explore), d(iverse)
    exploration: dict[str, Any]  # {"kind": ..., "epsilon"|"gamma"|"temperature": ...}
    chosen: np.ndarray  # uint16 candidate index shown in each slot
    feature_spec: int  # how features were built from the revisions (bandit.FEATURE_SPEC_VERSION)
    # Merchandising rules and rotation (``bandit.Shaping``), kept only when they did something:
    shift: np.ndarray | None = None  # float32 score shift per candidate, in units of spread
    rule_marks: np.ndarray | None = None  # uint8 per candidate: 1 pinned, 2 promotable
    rules: int = 0  # the rule set in force (a ``rule_versions`` id); 0: none
    # Each shown slot's source (an index into ``retrieval.SOURCES``) and score: on PostgreSQL
    # the ``slots`` rows leave them out (``logging.partitions``), so they are kept here.
    shown_sources: np.ndarray | None = None  # uint8 per slot
    shown_scores: np.ndarray | None = None  # float32 per slot

    def encode(self) -> bytes:
        optional: dict[str, Any] = {}
        if self.shift is not None:
            optional.update(_shift_fields(self.shift))
        if self.rule_marks is not None:
            optional["rm"] = self.rule_marks.astype("u1").tobytes()
        if self.rules:
            optional["rs"] = self.rules
        if self.shown_sources is not None:
            optional["src"] = self.shown_sources.astype("u1").tobytes()
        if self.shown_scores is not None:
            optional["ssc"] = self.shown_scores.astype("<f4").tobytes()
        return _compress(
            msgpack.packb(
                {
                    "v": PAYLOAD_VERSION,
                    "ctx": msgpack.packb(self.context, use_bin_type=True),
                    "rev": self.candidate_revs.astype("<u4").tobytes(),
                    "flg": self.candidate_flags.astype("u1").tobytes(),
                    "dyn": self.candidate_dynamic.astype("u1").tobytes(),
                    "lay": self.layout,
                    "exp": self.exploration,
                    "fs": self.feature_spec,
                    "ch": self.chosen.astype("<u2").tobytes(),
                    **optional,
                },
                use_bin_type=True,
            )
        )

    @staticmethod
    def fields(data: bytes) -> dict[str, Any]:
        """The encoded fields as msgpack gives them back (bytes for the arrays, and the context
        still packed: ``context_of``), after the version check: for readers that build their
        own arrays (replay's ``Payloads``)."""
        raw: dict[str, Any] = msgpack.unpackb(_decompress(data), raw=False)
        if raw.get("v") not in READABLE_VERSIONS:
            raise ValueError(f"unknown decision payload version {raw.get('v')!r}")
        return raw

    @staticmethod
    def fields_many(blobs: list[bytes]) -> list[dict[str, Any]]:
        """``fields`` of many payloads: decompressed in one loop and unpacked by one msgpack
        stream (a sixth less time than one ``fields`` call each, measured on OBD payloads)."""
        decompress = _decompressor().decompress
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0)
        unpacker.feed(b"".join([decompress(b) if b[:4] == ZSTD_MAGIC else b for b in blobs]))
        raw: list[dict[str, Any]] = list(unpacker)
        for fields in raw:
            if fields.get("v") not in READABLE_VERSIONS:
                raise ValueError(f"unknown decision payload version {fields.get('v')!r}")
        return raw

    @classmethod
    def decode(cls, data: bytes) -> DecisionPayload:
        raw = cls.fields(data)
        return cls(
            context=context_of(raw["ctx"]),
            candidate_revs=np.frombuffer(raw["rev"], dtype="<u4"),
            candidate_flags=np.frombuffer(raw["flg"], dtype="u1"),
            candidate_dynamic=np.frombuffer(raw["dyn"], dtype="u1"),
            scores=np.frombuffer(raw["sc"], dtype="<f2") if "sc" in raw else None,
            layout=raw["lay"],
            exploration=raw["exp"],
            feature_spec=raw["fs"],
            chosen=np.frombuffer(raw["ch"], dtype="<u2"),
            shift=_shift_of(raw, len(raw["rev"]) // 4),
            rule_marks=np.frombuffer(raw["rm"], dtype="u1") if "rm" in raw else None,
            rules=raw.get("rs", 0),
            shown_sources=np.frombuffer(raw["src"], dtype="u1") if "src" in raw else None,
            shown_scores=np.frombuffer(raw["ssc"], dtype="<f4") if "ssc" in raw else None,
        )


def _shift_fields(shift: np.ndarray) -> dict[str, bytes]:
    """The shift, dense (``sh``) or as the candidates it moved and by how much (``shi``,
    ``shv``), whichever is smaller: rotation moves the few items a shopper was shown lately,
    so its 800 dense bytes were most of a decision's size on PostgreSQL. Exact either way."""
    moved = np.flatnonzero(shift)
    if len(moved) * 6 >= len(shift) * 4:
        return {"sh": shift.astype("<f4").tobytes()}
    return {"shi": moved.astype("<u2").tobytes(), "shv": shift[moved].astype("<f4").tobytes()}


def _shift_of(raw: dict[str, Any], candidates: int) -> np.ndarray | None:
    if "sh" in raw:
        return np.frombuffer(raw["sh"], dtype="<f4")
    if "shi" not in raw:
        return None
    shift = np.zeros(candidates, dtype="<f4")
    shift[np.frombuffer(raw["shi"], dtype="<u2")] = np.frombuffer(raw["shv"], dtype="<f4")
    return shift


def payload_fields(data: bytes) -> dict[str, Any]:
    """A payload's fields, context unpacked, whatever its version (``DecisionPayload.fields``
    checks it)."""
    raw = dict(msgpack.unpackb(_decompress(data), raw=False))
    if "ctx" in raw:
        raw["ctx"] = context_of(raw["ctx"])
    return raw


def context_of(logged: bytes | dict[str, Any]) -> dict[str, Any]:
    """A payload's context: packed on its own since version 3, a plain map before."""
    if isinstance(logged, dict):
        return logged
    return dict(msgpack.unpackb(logged, raw=False))


def _compress(data: bytes) -> bytes:
    compressor = getattr(_codecs, "compressor", None)
    if compressor is None:
        compressor = _codecs.compressor = zstandard.ZstdCompressor(level=1)
    return bytes(compressor.compress(data))


def _decompress(data: bytes) -> bytes:
    if not data.startswith(ZSTD_MAGIC):
        return data
    return bytes(_decompressor().decompress(data))


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_codecs, "decompressor", None)
    if decompressor is None:
        decompressor = _codecs.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)
