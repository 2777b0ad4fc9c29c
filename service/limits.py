"""Refuse oversized uploads while they stream in, before the body is buffered anywhere."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class UploadLimitMiddleware:
    """413 for a request body over `max_bytes`: at once when Content-Length says so, else as soon
    as the streamed bytes pass the limit (chunked uploads carry no Content-Length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return

        received = 0
        refused = False
        response_started = False

        async def limited_receive() -> Message:
            # Past the limit the 413 goes out at once and the app is told the client left, so no
            # framework layer gets the chance to turn the cut-off body into a parse error.
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not response_started:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if refused:
                return  # the 413 is already the answer
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"upload larger than the {self.max_bytes} bytes allowed"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Capacity:
    """How many searches may be in flight at once, and how many are (read by /stats and /metrics)."""

    limit: int
    in_flight: int = 0
    rejected: int = 0


class InFlightLimitMiddleware:
    """At most `capacity.limit` requests to `paths` at once; past it, 503 with Retry-After at once,
    before the upload is read, so a traffic spike costs a bounded amount of memory and a fast answer.

    Runs on the event loop only, so plain counters are exact."""

    def __init__(self, app: ASGIApp, capacity: Capacity, paths: tuple[str, ...] = ("/search",),
                 retry_after_s: int = 1, on_reject: Callable[[], None] | None = None) -> None:
        self.app = app
        self.on_reject = on_reject
        self.capacity = capacity
        self.paths = paths
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        capacity = self.capacity
        if capacity.in_flight >= capacity.limit:
            capacity.rejected += 1
            if self.on_reject is not None:
                self.on_reject()
            body = json.dumps({"detail": f"the service is at capacity ({capacity.limit} searches in flight); "
                                         f"retry in {self.retry_after_s} s"}).encode()
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"retry-after", str(self.retry_after_s).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        capacity.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            capacity.in_flight -= 1
