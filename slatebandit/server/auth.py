"""API keys with scopes. Keys travel as ``Authorization: Bearer KEY``, ``X-API-Key: KEY`` or
(for Personalizer's clients) ``Ocp-Apim-Subscription-Key: KEY``.

Scopes: ``serve`` (slates, events, rewards), ``catalog`` (items), ``analyst`` (replay),
``admin`` (everything). With no keys configured the server is open, and the CLI refuses to bind
anything but loopback.
"""

from __future__ import annotations

from starlette.requests import Request

from slatebandit.errors import Forbidden, Unauthorized


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


def require(request: Request, scope: str, keys: dict[str, frozenset[str]]) -> None:
    if not keys:
        return
    key = presented_key(request)
    if key is None:
        raise Unauthorized("an API key is required (Authorization: Bearer KEY or X-API-Key)")
    scopes = keys.get(key)
    if scopes is None:
        raise Unauthorized("unknown API key")
    if scope not in scopes and "admin" not in scopes:
        raise Forbidden(f"this API key lacks the {scope!r} scope")
