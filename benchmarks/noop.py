"""The no-op route the throughput benchmark compares slatebandit with: Starlette under uvicorn,
decoding the JSON body and answering a small JSON object, and nothing else.

    uvicorn benchmarks.noop:app --workers 2 --no-access-log
"""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def slates(request: Request) -> Response:
    body = json.loads(await request.body())
    answer = {"user_id": body.get("user_id"), "items": []}
    return Response(json.dumps(answer), media_type="application/json")


app = Starlette(routes=[Route("/v1/slates", slates, methods=["POST"])])
