"""A cap on request bodies for every HTTP route, enforced before anything parses them.

Starlette reads a whole form (spooling big ones to disk) before a handler can
look at its signature: a 200 MB ``POST /incoming`` filled memory and disk before
its 403. Twilio's webhooks are a few KiB, the JSON API's bodies smaller still, so
this ASGI middleware answers 413 as soon as a body is known to be too big: from
``Content-Length`` before reading a byte, or, for chunked bodies, the moment the
bytes received pass the cap. WebSockets (the media stream) are not touched; their
messages have their own cap in uvicorn.

An answer sent before the body is finished (the app's own 400 for a form that
fails to parse in its first bytes) carries ``Connection: close``: otherwise
uvicorn keeps the connection and reads the unfinished body, however long, to
the end.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 65536


class _BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once the 413 has been sent."""


class BodyLimit:
    """ASGI middleware: HTTP request bodies over ``max_bytes`` get 413 and are never read further."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared == -1:
            await _answer(send, 400, "Content-Length is not a number")
            return
        if declared is not None and declared > self.max_bytes:
            await _answer(send, 413, f"request body over {self.max_bytes} bytes")
            return

        received = 0
        started = answered = False
        body_finished = declared == 0 or (declared is None and not _has_header(scope, b"transfer-encoding"))

        async def limited_receive() -> Message:
            nonlocal received, answered, body_finished
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_finished = not message.get("more_body", False)
                if received > self.max_bytes:
                    if not started:
                        await _answer(send, 413, f"request body over {self.max_bytes} bytes")
                        answered = True
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if answered:  # the app's own answer to the aborted body (often a 400) is dropped
                return
            if message["type"] == "http.response.start":
                started = True
                if not body_finished:
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except Exception:
            if not answered:  # FastAPI may wrap our exception; anything else is the app's own
                raise


def _has_header(scope: Scope, wanted: bytes) -> bool:
    return any(name == wanted for name, _ in scope.get("headers", ()))


def _content_length(scope: Scope) -> int | None:
    """The declared length; None without one (chunked), -1 when it is not a number."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
