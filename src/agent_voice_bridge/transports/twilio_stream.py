"""One Twilio media stream over a FastAPI/Starlette WebSocket, guarded against hostile peers.

Whoever holds this socket may not be Twilio. Malformed messages are logged and
skipped (a peer that sends many is closed), binary frames close with 1003, a flood
faster than real time or a second ``start`` is refused, and a silent peer times
out; only this stream is affected, never the server or another call. Oversized
messages are refused by the server's ``ws_max_size`` (1009).

Before ``start`` the peer is unauthenticated, so only the protocol itself is accepted:
at most one ``connected``, then ``start``, within a small byte budget; anything else
closes with 1008. After ``start`` every message type has a budget: media bytes and
messages at real time plus a burst, mark echoes no more than the marks we sent,
key presses at a person's pace. Four sockets repeating ``connected`` used to starve
live calls on the same event loop; a flood of marks took replies from other calls.
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from agent_voice_bridge.log_values import shown
from agent_voice_bridge.transports.twilio_protocol import (
    Connected,
    Dtmf,
    Event,
    Mark,
    Media,
    OutboundMessages,
    ProtocolError,
    Start,
    Stop,
    parse_event,
)

MAX_BAD_MESSAGES = 50
IDLE_SECONDS = 15.0
"""Twilio sends media every 20 ms, silence included: this long with nothing means the peer is gone."""
FLOOD_BURST_BYTES = 16000
"""Audio may arrive up to 2 s ahead of the clock (network bunching) before it counts as a flood."""
MEDIA_MIN_CHARGE = 160
"""Each media message costs at least one 20 ms frame of the budget, so empty payloads cannot flood."""
PRE_START_BYTES = 16384
"""``connected`` and ``start`` (its parameters are capped at 500 characters each) fit many times over."""
MARK_SLACK = 20
"""Twilio echoes each mark we send exactly once; a few more (stale, foreign) are ignored, not closed."""
DTMF_PER_SECOND = 10.0
DTMF_BURST = 20.0
"""A person pressing keys as fast as they can stays well inside this."""
MAX_FRAME_BYTES = 65536
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008


class StreamClosed(Exception):
    pass


def _kind(event: Event) -> str:
    return type(event).__name__.lower()


class _Bucket:
    """A token bucket: ``burst`` at once, then ``rate`` per second; refilled from the caller's clock read."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class TwilioMediaStream:
    """Receives parsed events and sends media/mark/clear; never raises for a closed peer on send."""

    def __init__(self, websocket: WebSocket, idle_seconds: float | None = None):
        self.ws = websocket
        self.start: Start | None = None
        self._out: OutboundMessages | None = None
        self._send_lock = asyncio.Lock()
        # Read at construction, not as a default argument, so the module setting applies to every new stream.
        self._idle_seconds = IDLE_SECONDS if idle_seconds is None else idle_seconds
        self._media_bytes = 0
        self._started_at = 0.0
        self._pre_start_bytes = 0
        self._connected = False
        self._marks_in = 0
        self._dtmf = _Bucket(DTMF_PER_SECOND, DTMF_BURST)
        self._last_message = time.monotonic()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_close: asyncio.Task | None = None
        self.bad_messages = 0
        self.closed = False
        self.close_reason = ""

    async def receive(self) -> Event | None:
        """The next well-formed event, or None when the stream has ended (stop, disconnect or refusal)."""
        if self._idle_timer is None and not self.closed:
            self._watch_idle()
        while not self.closed:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                self._ended()
                return None
            now = self._last_message = time.monotonic()
            if message["type"] == "websocket.disconnect":
                self._ended()
                return None
            text = message.get("text")
            if text is None:
                await self.close(CLOSE_UNSUPPORTED, "binary frames are not Twilio media-stream messages")
                return None
            if self.start is None:
                event = await self._before_start(text)
                if event is not None or self.closed:
                    return event
                continue
            try:
                event = parse_event(text)
            except ProtocolError as exc:
                if await self._bad(str(exc)):
                    return None
                continue
            problem = self._over_budget(event, now)
            if problem is not None:
                await self.close(CLOSE_POLICY, problem)
                return None
            if isinstance(event, (Start, Connected)):
                if await self._bad(f"{_kind(event)} after start"):
                    return None
                continue
            return event
        return None

    async def _before_start(self, text: str) -> Event | None:
        """The unauthenticated part: one ``connected`` (skipped), then ``start``; anything else closes 1008.

        Returns ``start`` (or ``stop``) for :meth:`wait_for_start`, None to read on (or once closed).
        """
        self._pre_start_bytes += len(text)
        if self._pre_start_bytes > PRE_START_BYTES:
            await self.close(CLOSE_POLICY, f"more than {PRE_START_BYTES} bytes before start")
            return None
        try:
            event = parse_event(text)
        except ProtocolError as exc:
            await self.close(CLOSE_POLICY, f"malformed message before start ({exc})")
            return None
        if isinstance(event, Connected) and not self._connected:
            self._connected = True
            return None
        if isinstance(event, (Start, Stop)):
            return event
        await self.close(CLOSE_POLICY, f"expected start, got {_kind(event)}")
        return None

    def _over_budget(self, event: Event, now: float) -> str | None:
        """Why ``event`` breaks its type's budget (the stream is then closed 1008), or None."""
        if isinstance(event, Media):
            if self._flooding(max(len(event.payload), MEDIA_MIN_CHARGE), now):
                return "audio arriving faster than real time"
        elif isinstance(event, Mark):
            self._marks_in += 1
            if self._out is not None and self._marks_in > self._out.marks_sent + MARK_SLACK:
                return f"{self._marks_in} mark echoes for {self._out.marks_sent} marks sent"
        elif isinstance(event, Dtmf):
            if not self._dtmf.take(now):
                return "key presses faster than a person can type"
        return None

    def _watch_idle(self) -> None:
        """Close the stream once nothing has arrived for ``idle_seconds``.

        One timer per idle period, re-armed from the last message's time when it fires, instead
        of a timeout around every receive: with 50 messages a second per call, a timeout per
        message (a timer handle, and on Python 3.11 a ``getpid`` syscall per running-loop
        lookup) was a measurable share of the server's CPU. Closing makes the pending receive
        return the disconnect (uvicorn queues it as soon as the app sends ``websocket.close``).
        """
        self._idle_timer = None
        if self.closed:
            return
        quiet = time.monotonic() - self._last_message
        loop = asyncio.get_running_loop()
        if quiet < self._idle_seconds:
            self._idle_timer = loop.call_later(self._idle_seconds - quiet, self._watch_idle)
        elif self._idle_close is None:
            self._idle_close = loop.create_task(self.close(CLOSE_POLICY, f"no message for {self._idle_seconds:g} s"))

    def _ended(self) -> None:
        self.closed = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    async def _bad(self, problem: str) -> bool:
        """Count a bad message; True if the stream was closed for it."""
        self.bad_messages += 1
        logger.warning(f"twilio stream: skipping bad message ({shown(problem, 200)})")
        if self.bad_messages >= MAX_BAD_MESSAGES:
            await self.close(CLOSE_POLICY, "too many malformed messages")
            return True
        return False

    def _flooding(self, size: int, now: float) -> bool:
        self._media_bytes += size
        allowed = (now - self._started_at) * 8000 + FLOOD_BURST_BYTES
        return self._media_bytes > allowed

    async def wait_for_start(self, timeout: float = 10.0) -> Start:
        """Return ``start`` (one ``connected`` before it is skipped); anything else closes the stream."""
        async def first_start() -> Start:
            event = await self.receive()
            if isinstance(event, Start):
                return event
            raise StreamClosed(self.close_reason or "stream ended before start")

        self.start = await asyncio.wait_for(first_start(), timeout)
        self._started_at = time.monotonic()
        self._out = OutboundMessages(self.start.stream_sid)
        return self.start

    @property
    def messages(self) -> OutboundMessages:
        if self._out is None:
            raise RuntimeError("no start event yet")
        return self._out

    async def send(self, text: str) -> bool:
        """Send one message; False if the peer is gone (the call is ending, nothing to do).

        Several tasks may send (the agent's audio, a barge-in's ``clear``): the lock hands the
        socket over in the order they asked, so audio that asked before a ``clear`` goes before it.
        """
        if self.closed:
            return False
        try:
            async with self._send_lock:
                await self.ws.send_text(text)
            return True
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            logger.debug(f"twilio stream: send failed, peer gone ({exc.__class__.__name__})")
            self._ended()
            return False

    async def say_goodbye(self, mulaw: bytes, timeout: float = 15.0) -> None:
        """Drop whatever is queued at Twilio, play ``mulaw`` and wait until it has played.

        Used when the bridge itself ends a call (shutdown, time limit, dead backend):
        the caller hears why instead of a silent hang-up.
        """
        out = self.messages
        name = "voice-bridge:goodbye"
        if not (await self.send(out.clear()) and await self.send(out.media(mulaw)) and await self.send(out.mark(name))):
            return
        try:
            async with asyncio.timeout(timeout):
                while (event := await self.receive()) is not None:
                    if isinstance(event, Mark) and event.name == name or isinstance(event, Stop):
                        return
        except TimeoutError:
            logger.warning("twilio stream: goodbye was not confirmed as played")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed and reason:
            logger.info(f"twilio stream: closing with {code} ({shown(reason, 200)})")
        self._ended()
        self.close_reason = self.close_reason or reason
        if self.ws.application_state == WebSocketState.CONNECTED and self.ws.client_state != WebSocketState.DISCONNECTED:
            try:
                # A close frame's reason is at most 123 bytes (RFC 6455), and may quote the peer's message.
                await self.ws.close(code=code, reason=shown(reason, 100).encode()[:123].decode("utf-8", "ignore"))
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
