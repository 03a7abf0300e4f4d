"""Compact msgpack encodings of what a decision logs.

A decision payload holds, for replay: the context features the scorer saw, the candidates as
item revisions (uint32), each candidate's generator flags (one byte), the scores (float16),
the slot layout and the exploration parameters. 200 candidates take about 1.4 KB. A slate
that merchandising rules or rotation shaped adds each candidate's score shift (4 bytes) and
rule marks (1 byte), and the id of the rule set in force.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

PAYLOAD_VERSION = 2
PINNED_MARK, PROMOTABLE_MARK = 1, 2  # bits of a candidate's rule marks


@dataclass(frozen=True)
class DecisionPayload:
    context: dict[str, Any]  # request context and user-state features, as the scorer saw them
    candidate_revs: np.ndarray  # uint32, one item revision per candidate, in candidate order
    candidate_flags: np.ndarray  # uint8 bitmask of the generators that proposed each candidate
    candidate_dynamic: np.ndarray  # uint8 popularity and age bands (pop << 4 | age)
    scores: np.ndarray  # float16 predicted reward per candidate
    layout: str  # one letter per slot: e(xploit), x (explore), d(iverse)
    exploration: dict[str, Any]  # {"kind": ..., "epsilon"|"gamma"|"temperature": ...}
    chosen: np.ndarray  # uint16 candidate index shown in each slot
    feature_spec: int  # how features were built from the revisions (bandit.FEATURE_SPEC_VERSION)
    # Merchandising rules and rotation (``bandit.Shaping``), kept only when they did something:
    shift: np.ndarray | None = None  # float32 score shift per candidate, in units of spread
    rule_marks: np.ndarray | None = None  # uint8 per candidate: 1 pinned, 2 promotable
    rules: int = 0  # the rule set in force (a ``rule_versions`` id); 0: none

    def encode(self) -> bytes:
        optional: dict[str, Any] = {}
        if self.shift is not None:
            optional["sh"] = self.shift.astype("<f4").tobytes()
        if self.rule_marks is not None:
            optional["rm"] = self.rule_marks.astype("u1").tobytes()
        if self.rules:
            optional["rs"] = self.rules
        return msgpack.packb(
            {
                "v": PAYLOAD_VERSION,
                "ctx": self.context,
                "rev": self.candidate_revs.astype("<u4").tobytes(),
                "flg": self.candidate_flags.astype("u1").tobytes(),
                "dyn": self.candidate_dynamic.astype("u1").tobytes(),
                "sc": self.scores.astype("<f2").tobytes(),
                "lay": self.layout,
                "exp": self.exploration,
                "fs": self.feature_spec,
                "ch": self.chosen.astype("<u2").tobytes(),
                **optional,
            },
            use_bin_type=True,
        )

    @staticmethod
    def fields(data: bytes) -> dict[str, Any]:
        """The encoded fields as msgpack gives them back (bytes for the arrays), after the
        version check: for readers that build their own arrays (replay's ``Payloads``)."""
        raw: dict[str, Any] = msgpack.unpackb(data, raw=False)
        if raw.get("v") != PAYLOAD_VERSION:
            raise ValueError(f"unknown decision payload version {raw.get('v')!r}")
        return raw

    @classmethod
    def decode(cls, data: bytes) -> DecisionPayload:
        raw = cls.fields(data)
        return cls(
            context=raw["ctx"],
            candidate_revs=np.frombuffer(raw["rev"], dtype="<u4"),
            candidate_flags=np.frombuffer(raw["flg"], dtype="u1"),
            candidate_dynamic=np.frombuffer(raw["dyn"], dtype="u1"),
            scores=np.frombuffer(raw["sc"], dtype="<f2"),
            layout=raw["lay"],
            exploration=raw["exp"],
            feature_spec=raw["fs"],
            chosen=np.frombuffer(raw["ch"], dtype="<u2"),
            shift=np.frombuffer(raw["sh"], dtype="<f4") if "sh" in raw else None,
            rule_marks=np.frombuffer(raw["rm"], dtype="u1") if "rm" in raw else None,
            rules=raw.get("rs", 0),
        )


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)
