"""Three ASGI middlewares: one caps request bodies while they stream in, one asks for the API
key, one counts traffic."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cnntool.serve.inputs import BodyTooLarge
from cnntool.serve.metrics import ServerMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def too_large_message(limit: int) -> str:
    return f"request body exceeds the limit of {limit} bytes (set by --max-body-bytes)"


class LimitBody:
    """Refuse bodies over `limit` bytes: at once when Content-Length says so, else as soon
    as the streamed chunks pass the limit (the endpoint sees BodyTooLarge, a 413), so a huge
    body is never buffered."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await send_error(send, 413, too_large_message(self.limit))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(too_large_message(self.limit))
            return message

        await self.app(scope, limited_receive, send)


# Open without the API key: what a load balancer or an orchestrator probes, and metrics.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})


class RequireKey:
    """Every path but OPEN_PATHS needs `Authorization: Bearer KEY` (else 401). The key is
    compared as sha256 digests with hmac.compare_digest: in constant time, and the time does
    not even depend on the length of what was sent."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = hashlib.sha256(key.encode()).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
        given = hashlib.sha256(token.strip()).digest()
        if not (hmac.compare_digest(given, self.expected) and scheme.lower() == b"bearer"):
            message = "missing or wrong API key; send the header Authorization: Bearer KEY"
            await send_error(send, 401, message, [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class ObserveRequests:
    """Count every HTTP request by route, method and status, and time it."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, routes: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            # A route's template labels it (/v1/models/{name}/predict); unknown paths and methods
            # share one label, so scanners cannot grow the series.
            template = getattr(scope.get("route"), "path", scope["path"])
            route = template if template in self.routes else "other"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.observe_request(route, method, status, time.perf_counter() - started)


async def send_error(
    send: Send, status: int, message: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += extra_headers or []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
