"""Catalog reads for the console and analysts: search items, and one item with its nearest
neighbours in the index (scope analyst). Writes are ``routes.put_items`` and ``remove_item``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from slatebandit.errors import InvalidInput, NotFound
from slatebandit.logging.items import get_items, search_items
from slatebandit.server.codec import respond
from slatebandit.server.schemas import query_int
from slatebandit.server.services import for_request

MAX_LIMIT = 100


async def search(request: Request) -> Response:
    """``GET /v1/items?q=TEXT&limit=N``: live items whose id or title holds TEXT."""
    s = for_request(request, "analyst")
    text = request.query_params.get("q", "").strip()
    if len(text) > 128:
        raise InvalidInput("q: at most 128 characters", field="q")
    limit = query_int(request, "limit", 20, 1, MAX_LIMIT)
    found = await s.read(lambda conn: search_items(conn, text, limit))
    catalog = s.store.catalog
    for item in found:  # what this worker has shown of it since it started
        key = catalog.live_key(item["item_id"])
        item["impressions"] = 0 if key is None else int(catalog.impressions[key])
    return respond(request, {"items": found})


async def read(request: Request) -> Response:
    """``GET /v1/items/{item_id}?neighbours=N``: the item and its N nearest live neighbours."""
    s = for_request(request, "analyst")
    item_id = request.path_params["item_id"]
    n = query_int(request, "neighbours", 10, 1, MAX_LIMIT)
    key = s.store.catalog.live_key(item_id)
    neighbours: list[tuple[str, float]] = []
    if key is not None:
        live, vectors = s.store.index.live_vectors([key])
        if len(live):
            labels, similarities = s.store.index.query(vectors, n + 1)
            item_ids = s.store.catalog.item_ids
            for label, similarity in zip(labels[0].tolist(), similarities[0].tolist(), strict=True):
                other = item_ids[label]
                if label != key and other is not None and len(neighbours) < n:
                    neighbours.append((other, float(similarity)))
    wanted = [item_id, *(other for other, _ in neighbours)]
    found = await s.read(lambda conn: get_items(conn, wanted))
    if item_id not in found:
        raise NotFound(f"item_id: no item {item_id!r}", field="item_id")
    shown = [
        {**found[other], "similarity": similarity}
        for other, similarity in neighbours
        if other in found
    ]
    return respond(request, {"item": found[item_id], "neighbours": shown})
