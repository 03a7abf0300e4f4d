"""Next page: a token that carries what the earlier pages of a chain showed.

Every slate answers ``next_page``. The same request again with ``page_token`` set to it answers
the next k items, none of which an earlier page of the chain showed: those are excluded before
the candidates are scored, as ``exclude`` is, so the logged propensities stay exact. A later
page's ranked generators reach as much further (``deeper``), so it has as many candidates.

The token is self-contained, so it works on any worker and while the database is away: the
URL-safe base64 (unpadded) of one version byte, then a msgpack map:

    p  the placement of the chain
    f  8 bytes: a hash of the request it continues (``request_hash``: the shopper, the
       placement and its items, the filters), so a token cannot continue another request
    s  the item keys every earlier page showed, uint32 little-endian

It is not signed: a forged token can only hide items from the request that carries it, as
``exclude`` can. A chain holds at most ``MAX_SHOWN`` items (about 2.7 KB of token): a page after
which it would hold more answers ``next_page: null``, and so does a page shorter than k (there
is nothing more to show). A token that does not decode, or belongs to another placement or
request, is a 400 naming ``page_token``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

from slatebandit.errors import InvalidInput
from slatebandit.retrieval import Quotas

VERSION = 1
MAX_SHOWN = 500
HASH_BYTES = 8
# The longest token: 4 bytes a key, and room for the version, the map and the placement.
MAX_CHARS = (4 * MAX_SHOWN + 64) * 4 // 3 + 4
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")


def request_hash(*parts: object) -> bytes:
    """What a page token binds the chain to; ``parts`` are plain values (their repr is the
    same on every worker)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=HASH_BYTES).digest()


@dataclass(frozen=True)
class Page:
    """Where a chain of pages stands: its placement, its request and what it has shown."""

    placement: str
    request: bytes  # request_hash of the request the chain belongs to
    shown: tuple[int, ...] = ()  # item keys of the earlier pages

    def next_token(self, keys: Sequence[int], k: int) -> str | None:
        """The token of the page after one that showed ``keys`` of the ``k`` asked for; None
        when the chain ends (a short page, or ``MAX_SHOWN`` reached)."""
        shown = [*self.shown, *keys]
        if len(keys) < k or len(shown) > MAX_SHOWN:
            return None
        body = {"p": self.placement, "f": self.request, "s": np.asarray(shown, "<u4").tobytes()}
        raw = bytes([VERSION]) + msgpack.packb(body, use_bin_type=True)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def deeper(quotas: Quotas, depth: int) -> Quotas:
    """``quotas`` for a page after ``depth`` shown items: the ranked generators (session,
    popular, context) propose that many more, as earlier pages took that many of their best,
    so a later page has as many candidates to choose from as the first."""
    if depth == 0:
        return quotas
    return dataclasses.replace(
        quotas,
        session=quotas.session + depth,
        popular=quotas.popular + depth,
        context=quotas.context + depth,
    )


def read_page(token: str | None, placement: str, request: bytes) -> Page:
    """The page ``token`` continues (the first page without one); a 400 naming ``page_token``
    if it is malformed or belongs to another placement or request."""
    if token is None:
        return Page(placement, request)
    page = _decoded(token)
    if page.placement != placement:
        raise InvalidInput(
            f"page_token: continues a {page.placement} slate, not a {placement} one",
            field="page_token",
        )
    if page.request != request:
        raise InvalidInput(
            "page_token: continues another request (its user, items or filters differ)",
            field="page_token",
        )
    return page


def _decoded(token: str) -> Page:
    malformed = InvalidInput("page_token: not a next_page this server answered", field="page_token")
    if len(token) > MAX_CHARS or not _ALPHABET.fullmatch(token):
        raise malformed
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = msgpack.unpackb(raw[1:], raw=False) if raw[:1] == bytes([VERSION]) else None
    except Exception:  # noqa: BLE001 - whatever a malformed token makes the decoders raise
        raise malformed from None
    if not (
        isinstance(body, dict)
        and set(body) == {"p", "f", "s"}
        and isinstance(body["p"], str)
        and isinstance(body["f"], bytes)
        and isinstance(body["s"], bytes)
        and len(body["s"]) % 4 == 0
        and len(body["s"]) <= 4 * MAX_SHOWN
    ):
        raise malformed
    shown = np.frombuffer(body["s"], dtype="<u4").tolist()
    return Page(body["p"], body["f"], tuple(shown))
