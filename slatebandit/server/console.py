"""The web console: static HTML, CSS and JavaScript of our own under ``/console/`` (no build step,
nothing fetched from elsewhere), reading the same JSON routes as any client.

``GET /v1/access`` tells it who is looking: which scopes the presented key grants, or that the
server is open (no keys configured). The console asks for a key only when one is needed, and
shows only the pages and actions the key's scopes allow; the routes check again regardless.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from slatebandit.server.auth import presented_key, scopes_of
from slatebandit.server.codec import respond
from slatebandit.server.services import Access

FILES = Path(__file__).with_name("console")
SCOPES = ("serve", "catalog", "analyst", "admin")


def static() -> StaticFiles:
    return StaticFiles(directory=FILES, html=True)


async def home(request: Request) -> Response:
    """``/``: what a newcomer opens first is the console."""
    return RedirectResponse("/console/", status_code=307)


async def access(request: Request) -> Response:
    """``GET /v1/access``: ``{open, key, scopes}``. ``key`` is ``none`` (open server), ``missing``,
    ``unknown`` or ``ok``; ``scopes`` are what the key grants (every scope when open). Always a
    200, so that asking is not an error in a browser's console: the other routes still refuse
    a request without the scope they need."""
    known: Access = request.state.access
    if not known.keys:
        return respond(request, {"open": True, "key": "none", "scopes": list(SCOPES)})
    key = presented_key(request)
    scopes = None if key is None else scopes_of(key, known.keys)
    state = "missing" if key is None else "unknown" if scopes is None else "ok"
    return respond(request, {"open": False, "key": state, "scopes": sorted(scopes or ())})
