"""API keys with scopes, and a rate limit per key.

Keys travel as ``Authorization: Bearer KEY``, ``X-API-Key: KEY`` or (for Personalizer's
clients) ``Ocp-Apim-Subscription-Key: KEY``. Scopes: ``serve`` (slates, events, rewards,
Personalizer's rank and rewards), ``catalog`` (items), ``analyst`` (replay, evaluations, reports,
read-only model and experiment views), ``admin`` (everything). With no keys configured the
server is open, and the CLI refuses to bind anything but loopback.

A presented key is compared with every configured key in constant time (``hmac.compare_digest``),
so response timing does not reveal how much of a key was right. Keys are never logged.
"""

from __future__ import annotations

import hmac
import math
import time

from starlette.requests import Request

from slatebandit.errors import Forbidden, TooManyRequests, Unauthorized


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (
        request.headers.get("x-api-key")
        or request.headers.get("ocp-apim-subscription-key")  # Personalizer's clients
        or None
    )


def scopes_of(key: str, keys: dict[str, frozenset[str]]) -> frozenset[str] | None:
    """The scopes ``key`` grants, or None; every configured key is compared, in constant time."""
    presented = key.encode()
    found = None
    for known, scopes in keys.items():
        if hmac.compare_digest(presented, known.encode()):
            found = scopes
    return found


class RateLimiter:
    """A token bucket per key: ``rate`` requests a second, up to ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst or max(1, math.ceil(rate)))
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str, now: float | None = None) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, when = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            raise TooManyRequests(
                f"this API key may make {self.rate:g} requests a second; retry in {wait} s",
                retry_after=wait,
            )
        self._buckets[key] = (tokens - 1.0, now)


def require(
    request: Request,
    scope: str,
    keys: dict[str, frozenset[str]],
    limiter: RateLimiter | None = None,
) -> None:
    if not keys:
        return
    key = presented_key(request)
    if key is None:
        raise Unauthorized("an API key is required (Authorization: Bearer KEY or X-API-Key)")
    scopes = scopes_of(key, keys)
    if scopes is None:
        raise Unauthorized("unknown API key")
    if scope not in scopes and "admin" not in scopes:
        raise Forbidden(f"this API key lacks the {scope!r} scope")
    if limiter is not None:
        limiter.take(key)
