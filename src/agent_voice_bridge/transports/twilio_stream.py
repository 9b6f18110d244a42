"""One Twilio media stream over a FastAPI/Starlette WebSocket."""

from __future__ import annotations

import asyncio

from loguru import logger
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from agent_voice_bridge.transports.twilio_protocol import (
    Connected,
    Event,
    OutboundMessages,
    ProtocolError,
    Start,
    Stop,
    parse_event,
)

MAX_BAD_MESSAGES = 50
"""A peer that keeps sending garbage is not Twilio: close instead of logging forever."""


class StreamClosed(Exception):
    pass


class TwilioMediaStream:
    """Receives parsed events and sends media/mark/clear; never raises for a closed peer on send."""

    def __init__(self, websocket: WebSocket):
        self.ws = websocket
        self.start: Start | None = None
        self._out: OutboundMessages | None = None
        self._send_lock = asyncio.Lock()
        self.bad_messages = 0
        self.closed = False

    async def receive(self) -> Event | None:
        """The next well-formed event, or None when the stream has ended (stop or disconnect)."""
        while not self.closed:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                self.closed = True
                return None
            if message["type"] == "websocket.disconnect":
                self.closed = True
                return None
            text = message.get("text")
            if text is None:
                text = message.get("bytes") or b""
            try:
                event = parse_event(text)
            except ProtocolError as exc:
                self.bad_messages += 1
                logger.warning(f"twilio stream: skipping bad message ({exc})")
                if self.bad_messages >= MAX_BAD_MESSAGES:
                    await self.close(1008, "too many malformed messages")
                    return None
                continue
            return event
        return None

    async def wait_for_start(self, timeout: float = 10.0) -> Start:
        """Skip ``connected`` and return ``start``; anything else first is a protocol error."""
        async def first_start() -> Start:
            while True:
                event = await self.receive()
                if event is None or isinstance(event, Stop):
                    raise StreamClosed("stream ended before start")
                if isinstance(event, Start):
                    return event
                if not isinstance(event, Connected):
                    raise ProtocolError(f"expected start, got {type(event).__name__.lower()}")

        self.start = await asyncio.wait_for(first_start(), timeout)
        self._out = OutboundMessages(self.start.stream_sid)
        return self.start

    @property
    def messages(self) -> OutboundMessages:
        if self._out is None:
            raise RuntimeError("no start event yet")
        return self._out

    async def send(self, text: str) -> bool:
        """Send one message; False if the peer is gone (the call is ending, nothing to do)."""
        if self.closed:
            return False
        try:
            async with self._send_lock:
                await self.ws.send_text(text)
            return True
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            logger.debug(f"twilio stream: send failed, peer gone ({exc.__class__.__name__})")
            self.closed = True
            return False

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True
        if self.ws.application_state == WebSocketState.CONNECTED and self.ws.client_state != WebSocketState.DISCONNECTED:
            try:
                await self.ws.close(code=code, reason=reason)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
