"""What a handler reaches: the worker's recommender, once the request's key is checked."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from slatebandit.config import Settings
from slatebandit.recommender import Recommender
from slatebandit.server.auth import RateLimiter, require


@dataclass(frozen=True)
class Access:
    """The API keys and their rate limit, parsed once from the settings."""

    keys: dict[str, frozenset[str]]
    limiter: RateLimiter

    @classmethod
    def of(cls, settings: Settings) -> Access:
        return cls(settings.keys, RateLimiter(settings.rate_limit, settings.rate_burst))


def for_request(request: Request, scope: str | None) -> Recommender:
    """The recommender, once the request's key is checked for ``scope`` (None: open)."""
    if scope is not None:
        access: Access = request.state.access
        require(request, scope, access.keys, access.limiter)
    recommender: Recommender = request.state.recommender
    return recommender
