"""uvicorn's HTTP and WebSocket protocols with the bounds uvicorn itself lacks.

uvicorn has no deadline for a request's headers (a socket that sends one byte a
second, or nothing, is held forever), does not apply ``limit_concurrency`` to
WebSocket upgrades, and after the app closes a WebSocket it keeps reading and
parsing whatever the peer sends for 10 s waiting for the close reply: a peer that
floods and never answers keeps the event loop, and every live call on it, busy
all that time. These subclasses add the three bounds; everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

HEADER_TIMEOUT_SECONDS = 10.0
"""A connection must have sent a request's complete headers this long after it opened (or began the request)."""
CLOSE_TIMEOUT_SECONDS = 1.0
"""After our close frame, how long the peer has to answer before the connection is dropped (uvicorn: 10 s): an honest
peer answers within a round trip."""
AFTER_CLOSE_BYTES = 65536
"""After our close frame, how much more the peer may send (messages in flight, its close reply) before we stop
reading it: an honest peer sends a frame or two."""


class BoundedCloseWebSocket(WebSocketsSansIOProtocol):
    """Once the close frame is sent: read at most ``AFTER_CLOSE_BYTES``, then abort after ``CLOSE_TIMEOUT_SECONDS``.

    Reading stops instead of the socket being dropped at once, so the peer still reads the close frame (a reset
    while it is sending would swallow it); the abort (not ``close``, which waits for a peer that may never read
    to take our buffered bytes) frees the socket.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = CLOSE_TIMEOUT_SECONDS
        self._after_close = 0

    def data_received(self, data: bytes) -> None:
        if self.close_sent and not self.disconnected:
            self._after_close += len(data)
            if self._after_close > AFTER_CLOSE_BYTES:
                if not self.transport.is_closing():
                    self.transport.pause_reading()
                return
        super().data_received(data)

    async def send(self, message) -> None:  # type: ignore[override]
        timer = self.close_timer
        await super().send(message)
        if self.close_timer is not None and self.close_timer is not timer:  # uvicorn armed transport.close
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)


class LimitedH11(H11Protocol):
    """h11 with a header deadline and ``limit_concurrency`` applied to WebSocket upgrades too (503)."""

    header_timeout: float = HEADER_TIMEOUT_SECONDS

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a request's headers are in (or the socket is upgraded)
            self._stop_header_timer()
        elif self._header_timer is None and not self.transport.is_closing():  # the next request has begun
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection whose request headers did not arrive in %g s", self.header_timeout)
            self.transport.close()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        limit = self.limit_concurrency
        if limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit):
            self.logger.warning("Exceeded concurrency limit (WebSocket upgrade refused).")
            self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"content-length: 19\r\nconnection: close\r\n\r\nService Unavailable")
            self.transport.close()
            return
        super().handle_websocket_upgrade(event)


def http_protocol(header_timeout: float = HEADER_TIMEOUT_SECONDS) -> type[LimitedH11]:
    """The HTTP protocol class for uvicorn's ``http=`` with this header deadline."""
    if header_timeout == LimitedH11.header_timeout:
        return LimitedH11
    return type("LimitedH11", (LimitedH11,), {"header_timeout": header_timeout})
