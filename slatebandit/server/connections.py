"""Keep-alive connections that end now and then, so that the workers share the load.

uvicorn's workers accept from one listening socket. A client that opens its pool of
keep-alive connections at once (a storefront's backend, a proxy, the soak) has them accepted
in a burst by whichever worker wakes first, since asyncio accepts every connection waiting,
and each stays with its worker for as long as it lives. In the soak one worker served 2.6x
the other's slates, near a whole core at "half capacity", and its queue held p99 at 87 to
402 ms.

So after ``SLATEBANDIT_KEEPALIVE_REQUESTS`` requests on one connection, the response carries
``Connection: close``, as nginx's ``keepalive_requests`` does. Every HTTP/1.1 client then
opens a new connection, and the worker that accepts it is the one waiting for work: the
idler one. Connections drift toward the worker with time to spare, and keep doing so as the
load moves. A new connection costs a TCP handshake on the client's side and an accept on the
worker's, once per that many requests.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLOSE = (b"connection", b"close")
# Connections the count is kept for before it starts afresh: a client that closes its own
# connections leaves its count behind, and this bounds them. Starting afresh only lets each
# open connection serve up to ``every`` more requests.
MOST_COUNTED = 10_000


class RecycleConnections:
    """ASGI middleware: the ``every``-th request on a connection (by the client's address and
    port) is answered with ``Connection: close``; 0 never closes one."""

    def __init__(self, app: ASGIApp, every: int) -> None:
        self.app = app
        self.every = every
        self.served: dict[tuple[str, int], int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or not self.every or client is None:
            await self.app(scope, receive, send)
            return
        connection = (client[0], client[1])
        served = self.served.get(connection, 0) + 1
        if served < self.every:
            if len(self.served) >= MOST_COUNTED:
                self.served.clear()
            self.served[connection] = served
            await self.app(scope, receive, send)
            return
        self.served.pop(connection, None)

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await send(message)

        await self.app(scope, receive, closing)
