"""A simulated Twilio caller: Twilio's side of a bidirectional ``<Connect><Stream>``.

Why it exists: the bridge must be testable without a phone or the internet
(DESIGN.md, "Offline first"). This module plays Twilio exactly as far as the
bridge can observe it (protocols.md §A2–A5):

* it sends ``connected``, ``start`` and then one 160-byte μ-law ``media`` frame
  every 20 ms of wall clock, silence included, with ``sequenceNumber``,
  ``chunk`` and ``timestamp`` as rising *strings*;
* it plays the server's audio on its own 8000-samples-per-second clock,
  echoes each ``mark`` once the audio queued before it has played, i.e. at the
  end of the frame that played its last byte (or at once if nothing is queued;
  ``play_delay`` holds both back, as a slow handset would), and on ``clear``
  drops unplayed audio and echoes every pending mark;
* on hang-up it sends ``stop`` as its last message and closes normally.

Everything happens on one *caller clock*: frame ``k`` carries samples
``160k … 160k+159`` and is sent at ``t = 0.02·k`` s after the stream started.
What the caller sent and what it heard are both recorded on that clock, so
latencies are differences of sample positions, not guesses from log times.
Events that arrive from the server between two frames are stamped with the
start of the next frame (the first instant they can affect what is heard).

Used by ``voice-bridge call`` and by the integration tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import math
import ssl
import uuid
import wave
import xml.etree.ElementTree as ET
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agent_voice_bridge.audio import mulaw

__all__ = [
    "FRAME_SAMPLES",
    "LineModel",
    "FRAME_SECONDS",
    "SAMPLE_RATE",
    "CallEvent",
    "CallResult",
    "CallSetupError",
    "Dtmf",
    "KeysAt",
    "Pause",
    "Say",
    "Step",
    "WaitHeard",
    "WaitKeys",
    "WaitQuiet",
    "WaitReply",
    "load_wav",
    "run_call",
    "save_wav",
]

SAMPLE_RATE = 8000
FRAME_SAMPLES = 160
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
SPEECH_DBFS = -40.0
"""A 20 ms frame louder than this (RMS) counts as speech for utterance bounds."""
STALE_WINDOW_SECONDS = 0.1
"""Media arriving this soon after a ``clear`` belongs to the interrupted reply."""
PLAYED_DIGIT_SECONDS = 0.2
"""How long Twilio takes per key of ``<Play digits>`` in this simulation (Twilio does not document it)."""
PLAY_DIGITS_PAUSE_SECONDS = 0.5
"""``w`` in ``<Play digits>``: Twilio documents half a second."""
TWILIO_API_VERSION = "2010-04-01"
WS_USER_AGENT = "Twilio.TmeWs/1.0"
HTTP_USER_AGENT = "TwilioProxy/1.1"

_SPEECH_RMS = 32768.0 * 10.0 ** (SPEECH_DBFS / 20.0)
_SILENT_FRAME = np.zeros(FRAME_SAMPLES, dtype=np.int16)


# --------------------------------------------------------------------------- script steps


@dataclass
class Say:
    """Speak this audio (int16 numpy array, 8 kHz mono) in real time."""

    audio: np.ndarray
    label: str = ""


@dataclass
class Pause:
    """Send silence for this long (rounded to whole 20 ms frames)."""

    seconds: float


@dataclass
class WaitHeard:
    """Send silence until a reply starts playing, then ``after`` more seconds.

    A reply counts if its first sample plays at or after the speech onset of the
    last ``Say`` (or after this step began, if nothing was said yet), so a reply
    that overlaps the caller's speech (a loopback line) counts too. After
    ``timeout`` seconds an event ``timeout`` is recorded and the script goes on
    without the ``after`` silence: a missing reply shows up in the result, it
    does not abort the call.
    """

    after: float = 0.0
    timeout: float = 10.0


@dataclass
class WaitQuiet:
    """Send silence until nothing is queued and no audio arrived for ``idle`` s.

    The idle time counts from the later of the last media arrival and the start
    of this step, so at least ``idle`` seconds of silence are always sent.
    """

    idle: float = 0.5
    timeout: float = 15.0


@dataclass
class WaitReply:
    """Send silence until a reply has begun and then ended: how a person waits for a slow AI.

    Why not ``WaitQuiet``: a line that thinks for seconds (a cascade, a model calling a tool) is quiet
    before it answers, and a caller that takes that quiet for the end of the turn hangs up on it. The
    reply counts if its first sample plays at or after the onset of the last ``Say`` (or after this step
    began, if nothing was said yet: a greeting). It has ended once nothing is queued and nothing arrived
    or played for ``idle`` seconds, so the gaps between a reply's sentences do not end it. When no reply
    begins within ``timeout`` s, or one still plays after ``longest`` s, an event ``gave_up`` says which
    and the script goes on (the summary lists them).
    """

    timeout: float = 20.0
    idle: float = 2.0
    longest: float = 120.0
    what: str = "reply"


@dataclass
class Dtmf:
    """Press keys: one ``dtmf`` message per digit, each followed by ``gap`` s of silence."""

    digits: str
    gap: float = 0.1


@dataclass
class KeysAt:
    """Press ``digits`` from ``at`` s on the caller clock, ``gap`` s apart, whatever step the script is in.

    Not a step: given to :func:`run_call` beside the script (``voice-bridge call --digits 1234@3.5``), as a
    person presses keys when they choose, over the greeting or mid-sentence. The call lasts at least until
    the last key is pressed. A key press counts as the caller's input for the next wait for a reply.
    """

    digits: str
    at: float
    gap: float = 0.1


@dataclass
class WaitKeys:
    """Send silence until every :class:`KeysAt` key has been pressed (then, say, ``WaitReply`` for the answer)."""


@dataclass
class Until:
    """Send silence until ``check()`` (sync or async) is true: a look at the server while the call is live.

    Checked every ``every`` seconds of call time; after ``timeout`` an event
    ``timeout`` is recorded and the script goes on.
    """

    check: Callable[[], bool | Awaitable[bool]]
    timeout: float = 10.0
    every: float = 0.1


Step = Say | Pause | WaitHeard | WaitQuiet | WaitReply | Dtmf | Until | WaitKeys


class LineModel(Protocol):
    """What lies between the caller's mouth and ear and the wire: noise, echo of what it plays, the band-limit.

    ``outgoing`` turns each 20 ms frame the caller says (int16, 160 samples, silence included) into what the
    line sends; ``played`` is told each 20 ms frame the caller's phone just played (what the server sent,
    silence when nothing is queued), after the frame of the same instant was sent, so an echo of it can
    reach the frames that follow. Used by ``bench.turns`` (echo and noise scenes).
    """

    def outgoing(self, pcm: np.ndarray) -> np.ndarray: ...

    def played(self, pcm: np.ndarray) -> None: ...


# --------------------------------------------------------------------------- results


@dataclass
class CallEvent:
    """Something that happened, stamped on the caller clock (seconds, 20 ms resolution)."""

    t: float
    kind: str
    detail: str = ""


@dataclass
class CallResult:
    """Everything a test or a person needs to judge a call, on one clock."""

    events: list[CallEvent]
    sent: np.ndarray
    heard: np.ndarray
    utterances: list[tuple[float, float]]
    clears: list[float]
    marks_echoed: list[str]
    marks_received: int
    media_bytes_received: int
    stale_media_after_clear: int
    close_code: int | None
    stream_sid: str
    call_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    received: list[tuple[float, str, bytes | str]] = field(default_factory=list)
    """The server's messages in arrival order, each with its time on the caller clock: ``(t, "media", μ-law
    payload)``, ``(t, "mark", name)``, ``(t, "clear", "")``."""
    played_late: list[float] = field(default_factory=list)
    """Per ``audio_start``: seconds from the arrival of that reply's first audio to it starting to play (the
    ``play_delay`` this simulated Twilio added, on its 20 ms frame clock)."""
    started_at: float = 0.0
    """Time 0 of this result's clock (the ``start`` message) on the caller's event-loop clock, which for
    asyncio's loops is ``time.monotonic()``: it relates the call's times to things that happened elsewhere."""
    stream_sids: list[str] = field(default_factory=list)
    """Every media stream the call had, in order (a REST update of the call's TwiML starts a new one)."""
    digits_played: str = ""
    """Keys Twilio played on the line for the bridge (``<Play digits>``), as the far end heard them."""

    def events_of(self, kind: str) -> list[CallEvent]:
        """The events of one kind, in time order."""
        return [e for e in self.events if e.kind == kind]

    def reply_latencies(self) -> list[float]:
        """Per utterance: first ``audio_start`` at/after its offset, minus the offset.

        One entry per utterance, aligned with ``utterances``; ``nan`` when no reply
        started before the next utterance began (so ``all(x < limit ...)`` fails
        for a missing reply instead of silently skipping it).
        """
        starts = [e.t for e in self.events_of("audio_start")]
        latencies: list[float] = []
        for i, (_, offset) in enumerate(self.utterances):
            limit = self.utterances[i + 1][0] if i + 1 < len(self.utterances) else math.inf
            reply = next((t for t in starts if offset - 1e-9 <= t < limit), None)
            latencies.append(math.nan if reply is None else round(reply - offset, 6))
        return latencies

    def reply_breakdown(self) -> list[tuple[float, float, float] | None]:
        """Per utterance, what the caller can see of the reply's latency: (its speech end → the reply's first
        audio arrived, → it started playing, total), in seconds; None without a reply. Aligned with
        ``utterances``; the server's own breakdown of the same total is in the call record."""
        arrivals = [e.t for e in self.events_of("reply_arrived")]
        out: list[tuple[float, float, float] | None] = []
        for (_, offset), total in zip(self.utterances, self.reply_latencies()):
            if math.isnan(total):
                out.append(None)
                continue
            played = offset + total
            arrived = next((t for t in reversed(arrivals) if offset - 1e-9 <= t <= played + 1e-9), played)
            out.append((round(arrived - offset, 6), round(played - arrived, 6), total))
        return out

    def clear_latencies(self) -> list[float]:
        """Per clear: its time minus the onset of the latest utterance begun before it.

        Aligned with ``clears``; ``nan`` for a clear that came before any speech.
        """
        latencies: list[float] = []
        for tc in self.clears:
            onsets = [on for on, _ in self.utterances if on <= tc + 1e-9]
            latencies.append(round(tc - onsets[-1], 6) if onsets else math.nan)
        return latencies

    def timeline(self, *, every_mark: bool = False) -> str:
        """A readable account of the call: its events, then latencies and counters.

        A reply's marks are one line (``marks 16/16 echoed``): one per 100 ms of audio would
        bury the events that matter. ``every_mark`` lists each echo instead, for debugging.
        """
        lines = [f"call {self.call_sid}  stream {self.stream_sid}"]
        events = self.events if every_mark else self._marks_summarised()
        lines += [f"{e.t:8.3f} s  {e.kind:<17} {e.detail}".rstrip() for e in events]
        lines.append("summary:")
        for i, ((on, off), parts) in enumerate(zip(self.utterances, self.reply_breakdown()), 1):
            reply = "no reply" if parts is None else (
                f"reply after {parts[2] * 1000:.0f} ms (speech end → first audio arrived {parts[0] * 1000:.0f} ms"
                f" → played {parts[1] * 1000:.0f} ms)")
            lines.append(f"  utterance {i}: {on:.2f}–{off:.2f} s, {reply}")
        for tc, lat in zip(self.clears, self.clear_latencies()):
            since = "before any speech" if math.isnan(lat) else f"{lat * 1000:.0f} ms after speech onset"
            lines.append(f"  clear at {tc:.2f} s, {since}")
        for event in self.events_of("gave_up"):
            lines.append(f"  gave up waiting at {event.t:.2f} s: {event.detail}")
        lines.append(
            f"  marks: {self.marks_received} received, {len(self.marks_echoed)} echoed; "
            f"media received: {self.media_bytes_received} B "
            f"({self.media_bytes_received / SAMPLE_RATE:.2f} s); "
            f"stale after clear: {self.stale_media_after_clear} B"
        )
        lines.append(
            f"  sent {len(self.sent) / SAMPLE_RATE:.2f} s; heard "
            f"{_count_loud_frames(self.heard) * FRAME_SECONDS:.2f} s of audio; close code {self.close_code}"
        )
        return "\n".join(lines)

    def _marks_summarised(self) -> list[CallEvent]:
        """The events with each reply's mark echoes folded into one ``marks`` event at the last echo.

        A reply's marks are those echoed from its ``audio_start`` to the next one (a ``clear`` echoes
        the pending ones at once). Marks received but never echoed (the call ended first) are the
        latest reply's, so they count in its total.
        """
        groups: list[list[CallEvent]] = [[]]
        others: list[CallEvent] = []
        for event in self.events:
            if event.kind == "audio_start" and groups[-1]:
                groups.append([])
            if event.kind == "mark":
                groups[-1].append(event)
            else:
                others.append(event)
        groups = [g for g in groups if g]
        unechoed = self.marks_received - len(self.marks_echoed)
        summaries = []
        for i, group in enumerate(groups):
            total = len(group) + (unechoed if i == len(groups) - 1 else 0)
            why = Counter(e.detail.rpartition(" (")[2].rstrip(")") if e.detail.endswith(")") else "echoed"
                          for e in group)
            how = "" if set(why) == {"played"} else f" ({', '.join(f'{n} {w}' for w, n in why.items())})"
            summaries.append(CallEvent(group[-1].t, "marks", f"{len(group)}/{total} echoed{how}"))
        if unechoed and not groups:
            summaries.append(CallEvent(self.events[-1].t if self.events else 0.0, "marks", f"0/{unechoed} echoed"))
        return sorted(others + summaries, key=lambda e: e.t)


class CallSetupError(RuntimeError):
    """The call could not be set up: webhook failed, TwiML unusable, or handshake refused.

    ``status`` is the HTTP status of the webhook or of the refused WebSocket
    handshake when there was one, so tests can assert on 403 and the like.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- playback


class _Playback:
    """Twilio's outbound buffer: audio plays in arrival order at 8000 B/s.

    Positions are absolute byte counts since the stream began, so a mark is just
    "the position the queue had reached when it arrived" and is due once the
    play cursor gets there. Kept free of I/O so its rules are easy to read.
    """

    def __init__(self) -> None:
        self._queue = bytearray()
        self._played = 0
        self._marks: deque[tuple[int, str]] = deque()
        self.playing = False

    @property
    def empty(self) -> bool:
        return not self._queue

    def add_media(self, data: bytes) -> None:
        self._queue += data

    def add_mark(self, name: str) -> bool:
        """Queue a mark; True if it is due at once (nothing buffered ahead of it)."""
        if not self._queue:
            return True
        self._marks.append((self._played + len(self._queue), name))
        return False

    def take_frame(self) -> tuple[bytes, int, list[str]]:
        """Play one 20 ms frame: (160 μ-law bytes, how many were audio, marks passed)."""
        n = min(FRAME_SAMPLES, len(self._queue))
        frame = bytes(self._queue[:n]) + bytes([mulaw.SILENCE_BYTE]) * (FRAME_SAMPLES - n)
        del self._queue[:n]
        self._played += n
        passed: list[str] = []
        while self._marks and self._marks[0][0] <= self._played:
            passed.append(self._marks.popleft()[1])
        return frame, n, passed

    def clear(self) -> tuple[int, list[str]]:
        """Drop unplayed audio; return (bytes dropped, pending marks to echo now)."""
        dropped = len(self._queue)
        self._played += dropped
        self._queue.clear()
        pending = [name for _, name in self._marks]
        self._marks.clear()
        return dropped, pending


# --------------------------------------------------------------------------- the call


class _Call:
    """One media stream from the caller's side: a frame clock plus a receive task."""

    def __init__(
        self,
        ws: ClientConnection,
        *,
        stream_sid: str,
        call_sid: str,
        account_sid: str,
        custom_parameters: dict[str, str],
        opener: Callable[[str], Awaitable[ClientConnection]] | None = None,
        play_delay: float = 0.0,
        line: LineModel | None = None,
    ) -> None:
        self._ws = ws
        self._opener = opener  # opens the stream a redirect's <Connect><Stream url> names
        self._line = line
        self.stream_sid = stream_sid
        self.stream_sids = [stream_sid]
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.custom_parameters = custom_parameters
        self._loop = asyncio.get_running_loop()
        self._send_lock = asyncio.Lock()
        self._seq = 0
        self._frames = 0  # frames sent so far == index of the next frame
        self._t0 = 0.0
        self._closed = False
        self._stopped = False
        self._playback = _Playback()
        self._sent: list[np.ndarray] = []
        self._heard: list[np.ndarray] = []
        self.events: list[CallEvent] = []
        self.utterances: list[tuple[float, float]] = []
        self._last_onset: float | None = None
        self._audio_starts: list[float] = []
        self.clears: list[float] = []
        self.marks_echoed: list[str] = []
        self.marks_received = 0
        self.media_bytes_received = 0
        self.received: list[tuple[float, str, bytes | str]] = []
        self._returned: asyncio.Event | None = None  # set by wait_returned
        self._sent_bytes = 0
        self.stale_media = 0
        self._stale_until: float | None = None  # loop time; reset by the caller's next speech_end
        self._last_media_t = -math.inf
        self._last_played_t = -math.inf  # end of the last frame that held server audio
        self.digits_played = ""
        """Keys Twilio played on the line (``<Play digits>``): what the far end heard pressed."""
        self._keys_due: list[tuple[float, str]] = []  # (caller-clock time, key) still to press, by time
        self._stream_first_frame = 0  # a stream's chunk and timestamp count from its own start
        self._between = False  # between a redirect's stop and its new stream: what is sent goes nowhere
        self._moved: asyncio.Future[bool] | None = None  # a redirect's outcome: True once the new stream is open
        self.play_delay = play_delay
        self._arriving: deque[tuple[float, str, Any]] = deque()  # (due, "media"|"mark", payload): play_delay
        self._due_marks: list[str] = []  # passed while playing the last frame: echoed once it has played
        self._reply_arrived: float | None = None  # loop time the queued reply's first audio arrived
        self.played_late: list[float] = []

    def press_at(self, keys: list[KeysAt]) -> None:
        due = [(k.at + i * k.gap, digit) for k in keys for i, digit in enumerate(k.digits)]
        self._keys_due = sorted(self._keys_due + due, key=lambda d: d[0])

    # ---- clock and bookkeeping

    def now(self) -> float:
        """Caller clock: start of the next frame to be sent."""
        return round(self._frames * FRAME_SECONDS, 6)

    def _event(self, kind: str, detail: str = "", t: float | None = None) -> None:
        self.events.append(CallEvent(self.now() if t is None else round(t, 6), kind, detail))

    # ---- sending

    async def _send(self, event: str, body: dict[str, Any], *, final: bool = False) -> bool:
        """Send one numbered message; False if the socket is gone or we hung up.

        The lock makes "take the next sequenceNumber" and "put it on the wire"
        one step, so numbers reach the server in order from both tasks.
        """
        if self._closed or (self._stopped and not final):
            return False
        async with self._send_lock:
            if self._between:
                return True  # no stream between a redirect's stop and its new stream: nobody hears this
            self._seq += 1
            message = {"event": event, "sequenceNumber": str(self._seq), "streamSid": self.stream_sid, **body}
            try:
                await self._ws.send(json.dumps(message))
            except ConnectionClosed:
                self._closed = True
                return False
        return True

    async def _start(self, first: bool = True) -> None:
        try:
            await self._ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        except ConnectionClosed:
            self._closed = True  # accepted then dropped at once: the result shows it, no exception
            return
        self._event("connected", f"stream {self.stream_sid}")
        start = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1},
            "customParameters": dict(self.custom_parameters),
        }
        await self._send("start", {"start": start})
        if first:
            self._t0 = self._loop.time()

    async def _echo_mark(self, name: str, why: str = "") -> None:
        if await self._send("mark", {"mark": {"name": name}}):
            self.marks_echoed.append(name)
            self._event("mark", f"{name} ({why})" if why else name)

    async def _tick(self, pcm: np.ndarray) -> bool:
        """Send frame k at its absolute deadline, then play 20 ms of server audio.

        Deadlines are ``t0 + 0.02·k`` on the monotonic loop clock, so a late
        wake-up never shifts later frames (no drift from accumulated sleeps).
        """
        if self._closed:
            return False
        delay = self._t0 + self._frames * FRAME_SECONDS - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await self._echo_due_marks()
        await self._admit(self._loop.time())
        while self._keys_due and self._keys_due[0][0] <= self.now() + 1e-9:
            if not await self._press(self._keys_due.pop(0)[1]):
                return False
        k = self._frames
        if self._line is not None:
            pcm = self._line.outgoing(pcm)
        wire = mulaw.encode_array(pcm)
        media = {
            "track": "inbound",
            "chunk": str(k - self._stream_first_frame + 1),
            "timestamp": str((k - self._stream_first_frame) * 20),
            "payload": base64.b64encode(wire).decode("ascii"),
        }
        if not await self._send("media", {"media": media}):
            return False
        frame, n, passed = self._playback.take_frame()
        self._sent.append(mulaw.decode_array(wire))
        self._heard.append(mulaw.decode_array(frame))
        if self._line is not None:
            self._line.played(self._heard[-1])
        self._frames += 1
        self._track_playing(k, n)
        self._due_marks.extend(passed)  # echoed at the next frame, when this one has finished playing
        return not self._closed

    @property
    def _nothing_to_play(self) -> bool:
        """No audio queued, nor on its way to the player (``play_delay``)."""
        return self._playback.empty and not self._arriving

    async def _echo_due_marks(self) -> None:
        due, self._due_marks = self._due_marks, []
        for name in due:
            await self._echo_mark(name, "played")

    async def _admit(self, now: float) -> None:
        """Hand what arrived ``play_delay`` ago to the player, in arrival order."""
        while self._arriving and self._arriving[0][0] <= now:
            _, kind, payload = self._arriving.popleft()
            await self._queue(kind, payload)

    async def _queue(self, kind: str, payload: Any) -> None:
        if kind == "media":
            self._playback.add_media(payload)
        elif self._playback.add_mark(payload):
            await self._echo_mark(payload, "nothing queued")

    def _track_playing(self, k: int, n: int) -> None:
        """Turn per-frame fill levels into audio_start / audio_end events."""
        frame_start = k * FRAME_SECONDS
        if n:
            self._last_played_t = round(frame_start + FRAME_SECONDS, 6)
        if n and not self._playback.playing:
            self._playback.playing = True
            self._audio_starts.append(round(frame_start, 6))
            self._event("audio_start", t=frame_start)
            if self._reply_arrived is not None:
                self.played_late.append(round(self._t0 + frame_start - self._reply_arrived, 6))
                self._reply_arrived = None
        if self._playback.playing and n < FRAME_SAMPLES:
            self._playback.playing = False
            self._event("audio_end", t=frame_start + n / SAMPLE_RATE)

    async def _silence(self, seconds: float) -> bool:
        for _ in range(_frames_in(seconds)):
            if not await self._tick(_SILENT_FRAME):
                return False
        return True

    # ---- steps

    async def run_steps(self, steps: list[Step], tail: float) -> None:
        for step in steps:
            if self._closed:
                return
            if isinstance(step, Say):
                await self._say(step)
            elif isinstance(step, Pause):
                await self._silence(step.seconds)
            elif isinstance(step, WaitHeard):
                await self._wait_heard(step)
            elif isinstance(step, WaitQuiet):
                await self._wait_quiet(step)
            elif isinstance(step, WaitReply):
                await self._wait_reply(step)
            elif isinstance(step, Dtmf):
                await self._dtmf(step)
            elif isinstance(step, Until):
                await self._until(step)
            elif isinstance(step, WaitKeys):
                await self._wait_keys()
            else:
                raise TypeError(f"not a call step: {step!r}")
        await self._wait_keys()
        await self._silence(tail)

    async def _say(self, step: Say) -> None:
        frames = _frames_of(_as_int16(step.audio))
        loud = [i for i, f in enumerate(frames) if _rms(f) > _SPEECH_RMS]
        # A Say with nothing above -40 dBFS still counts as an utterance, spanning the whole Say.
        first, last = (loud[0], loud[-1]) if loud else (0, len(frames) - 1)
        label = step.label or f"say {len(self.utterances) + 1}"
        note = "" if loud else " (nothing above -40 dBFS)"
        onset: float | None = None
        for i, frame in enumerate(frames):
            if i == first:
                onset = self.now()
                self._last_onset = onset
                self._event("speech_start", label + note)
            ok = await self._tick(frame)
            if i == last and ok:
                self._end_utterance(onset, label)
                onset = None
            if not ok:
                break
        if onset is not None:  # hung up mid-speech: the utterance ends where the call did
            self._end_utterance(onset, label)

    def _end_utterance(self, onset: float | None, label: str) -> None:
        if onset is None:
            return
        self.utterances.append((onset, self.now()))
        self._event("speech_end", label)
        self._stale_until = None  # the server may now legitimately answer the new utterance

    async def _silent_until(self, done: Callable[[], bool], timeout: float, kind: str, why: str) -> bool:
        """Send silence frame by frame until ``done()``; after ``timeout`` s record ``kind``/``why`` instead.

        True when ``done()`` came true, False on the timeout or a closed call.
        """
        budget = _frames_in(timeout)
        while not done():
            if budget <= 0:
                self._event(kind, why)
                return False
            budget -= 1
            if not await self._tick(_SILENT_FRAME):
                return False
        return True

    def _reply_began(self) -> Callable[[], bool]:
        """Whether audio started since the caller's last utterance began (or since now, before any)."""
        since = self._last_onset if self._last_onset is not None else self.now()
        return lambda: any(t >= since - 1e-9 for t in self._audio_starts)

    async def _wait_heard(self, step: WaitHeard) -> None:
        if await self._silent_until(self._reply_began(), step.timeout, "timeout",
                                    f"WaitHeard: no reply within {step.timeout:g} s"):
            await self._silence(step.after)

    async def _wait_quiet(self, step: WaitQuiet) -> None:
        began = self.now()
        await self._silent_until(
            lambda: self._nothing_to_play and self.now() - max(self._last_media_t, began) >= step.idle - 1e-9,
            step.timeout, "timeout", f"WaitQuiet: still hearing audio after {step.timeout:g} s")

    async def _wait_reply(self, step: WaitReply) -> None:
        if not await self._silent_until(self._reply_began(), step.timeout, "gave_up",
                                        f"no {step.what} began within {step.timeout:g} s"):
            return
        await self._silent_until(
            lambda: self._nothing_to_play
            and self.now() - max(self._last_media_t, self._last_played_t) >= step.idle - 1e-9,
            step.longest, "gave_up", f"the {step.what} still played after {step.longest:g} s")

    async def _until(self, step: Until) -> None:
        deadline = self.now() + step.timeout
        while True:
            outcome = step.check()
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome:
                return
            if self.now() >= deadline:
                self._event("timeout", f"Until: not true within {step.timeout:g} s")
                return
            if not await self._silence(step.every):
                return

    async def _dtmf(self, step: Dtmf) -> None:
        for digit in step.digits:
            if not await self._press(digit) or not await self._silence(step.gap):
                return

    async def _wait_keys(self) -> None:
        while self._keys_due and await self._tick(_SILENT_FRAME):
            pass

    async def _press(self, digit: str) -> bool:
        if not await self._send("dtmf", {"dtmf": {"track": "inbound_track", "digit": digit}}):
            return False
        self._event("dtmf", digit)
        self._last_onset = self.now()  # what the line says next answers the key, as it would an utterance
        return True

    # ---- receiving

    async def receive_loop(self) -> None:
        """Handle server messages until the socket closes; never lets one bad message end the call.

        A redirect closes the socket and opens the next: reading goes on there, on the same call.
        """
        try:
            while True:
                try:
                    async for message in self._ws:
                        await self._handle(message)
                except ConnectionClosed:
                    pass
                moved, self._moved = self._moved, None
                if moved is None or not await moved:
                    break
        finally:
            self._closed = True
            by = "caller" if self._stopped else "server"
            self._event("closed", f"code {self._ws.close_code} by {by}")

    async def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._event("bad_message", f"binary frame of {len(message)} bytes")
            return
        try:
            msg = json.loads(message)
        except ValueError:
            self._event("bad_message", f"not JSON: {message[:80]!r}")
            return
        if not isinstance(msg, dict):
            self._event("bad_message", f"not a JSON object: {message[:80]!r}")
            return
        handlers = {"media": self._on_media, "mark": self._on_mark, "clear": self._on_clear}
        handler = handlers.get(msg.get("event"))  # type: ignore[arg-type]
        if handler is None:
            self._event("bad_message", f"unknown event: {message[:80]!r}")
        elif msg.get("streamSid") != self.stream_sid:
            self._event("bad_message", f"{msg.get('event')} with streamSid {msg.get('streamSid')!r}")
        else:
            try:
                await handler(msg)
            except (KeyError, TypeError, ValueError, binascii.Error) as exc:
                self._event("bad_message", f"{msg.get('event')}: {type(exc).__name__} {exc}"[:120])

    async def _on_media(self, msg: dict[str, Any]) -> None:
        payload = msg["media"]["payload"]
        if not isinstance(payload, str):
            raise TypeError("media.payload is not a string")
        data = base64.b64decode(payload, validate=True)
        self.received.append((self.now(), "media", data))
        self.media_bytes_received += len(data)
        if self._returned is not None and self.media_bytes_received >= self._sent_bytes:
            self._returned.set()
        self._last_media_t = self.now()
        if self._stale_until is not None and self._loop.time() <= self._stale_until:
            self.stale_media += len(data)
            self._event("media_after_clear", f"{len(data)} B")
        if self._reply_arrived is None and self._nothing_to_play:
            self._reply_arrived = self._loop.time()
            self._event("reply_arrived", f"{len(data)} B")
        await self._receive("media", data)

    async def _receive(self, kind: str, payload: Any) -> None:
        """Queue for playing now, or after ``play_delay`` (a handset's jitter buffer, a slow carrier)."""
        if self.play_delay > 0:
            self._arriving.append((self._loop.time() + self.play_delay, kind, payload))
        else:
            await self._queue(kind, payload)

    async def _on_mark(self, msg: dict[str, Any]) -> None:
        name = msg["mark"]["name"]
        if not isinstance(name, str) or not name:
            raise ValueError("mark without a name")
        self.marks_received += 1
        self.received.append((self.now(), "mark", name))
        await self._receive("mark", name)

    async def _on_clear(self, _msg: dict[str, Any]) -> None:
        dropped, pending = self._playback.clear()
        self.received.append((self.now(), "clear", ""))
        for _, kind, payload in self._arriving:
            if kind == "media":
                dropped += len(payload)
            else:
                pending.append(payload)
        self._arriving.clear()
        self._reply_arrived = None
        self.clears.append(self.now())
        self._stale_until = self._loop.time() + STALE_WINDOW_SECONDS
        self._event("clear", f"dropped {dropped} B, {len(pending)} pending marks")
        for name in pending:
            await self._echo_mark(name, "cleared")

    # ---- Twilio's side of a REST update of the live call

    async def redirect(self, twiml: str) -> None:
        """The call's TwiML was replaced (``calls(sid).update(twiml=…)``): do what Twilio does.

        The current ``<Connect><Stream>`` ends: a ``stop``, and the socket closes; audio Twilio still held
        for it is dropped and its marks never come back. Then the new TwiML runs: ``<Play digits>`` plays
        each key to the far end (an event ``digit_played``; ``w`` is half a second), ``<Pause length>``
        waits, ``<Connect><Stream>`` opens a new stream (new streamSid, same callSid, its own
        ``<Parameter>``s, sequence numbers and media timestamps from the start), ``<Hangup>`` or the end
        of the document ends the call. The caller's clock runs on throughout: what they say in the gap is
        sent nowhere.
        """
        try:
            root = ET.fromstring(twiml)
        except ET.ParseError as exc:
            self._event("bad_redirect", f"not XML: {exc}")
            return
        async with self._send_lock:
            if self._closed or self._stopped or self._between:
                return
            self._between = True
            moved = self._moved = self._loop.create_future()
            self._seq += 1
            stop = {"event": "stop", "sequenceNumber": str(self._seq), "streamSid": self.stream_sid,
                    "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}}
            try:
                await self._ws.send(json.dumps(stop))
            except ConnectionClosed:
                pass
        self._event("stop", "the call's TwiML was replaced")
        await self._ws.close()
        self._playback.clear()
        self._arriving.clear()  # what was on its way to the player goes too, and no mark of this stream comes back
        self._due_marks.clear()
        self._reply_arrived = None
        connected = False
        try:
            for verb in root:
                if verb.tag == "Play" and verb.get("digits"):
                    for key in verb.get("digits", ""):
                        if key in "wW":
                            await asyncio.sleep(PLAY_DIGITS_PAUSE_SECONDS)
                        else:
                            self._event("digit_played", key)
                            self.digits_played += key
                            await asyncio.sleep(PLAYED_DIGIT_SECONDS)
                elif verb.tag == "Pause":
                    await asyncio.sleep(float(verb.get("length", "1")))
                elif verb.tag == "Connect" and verb.find("Stream") is not None:
                    connected = await self._restream(verb.find("Stream"))  # type: ignore[arg-type]
                    break
                else:  # <Hangup/> or anything this simulation does not play
                    break
        finally:
            if not connected:
                self._event("redirect_ended", "no new stream: the call is over")
                self._closed = True
            moved.set_result(connected)

    async def _restream(self, stream: ET.Element) -> bool:
        url = stream.get("url", "")
        if self._opener is None or self._stopped or not url:
            return False
        try:
            ws = await self._opener(url)
        except CallSetupError as exc:
            self._event("redirect_failed", str(exc)[:120])
            return False
        self._ws = ws
        self.stream_sid = _sid("MZ")
        self.stream_sids.append(self.stream_sid)
        self.custom_parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")
                                  if p.get("name")}
        self._seq = 0
        self._stream_first_frame = self._frames
        self._between = False  # the new stream's connected/start go out now, ahead of its first media frame
        await self._start(first=False)
        return True

    # ---- ending

    async def wait_returned(self, timeout: float) -> None:
        """Wait until the server has sent back as many audio bytes as were sent (an echo line), at most ``timeout``."""
        self._sent_bytes = sum(len(frame) for frame in self._sent)
        if self.media_bytes_received >= self._sent_bytes:
            return
        self._returned = asyncio.Event()
        try:
            await asyncio.wait_for(self._returned.wait(), timeout)
        except TimeoutError:
            pass

    async def close(self) -> None:
        await self._ws.close()

    async def hang_up(self) -> None:
        """Send ``stop`` as the last message and close with 1000, unless the server already closed."""
        if self._closed:
            return
        await self._echo_due_marks()
        self._stopped = True
        stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
        if await self._send("stop", {"stop": stop}, final=True):
            self._event("stop")
        await self._ws.close()

    def result(self) -> CallResult:
        return CallResult(
            events=sorted(self.events, key=lambda e: e.t),
            sent=_concat(self._sent),
            heard=_concat(self._heard),
            utterances=list(self.utterances),
            clears=list(self.clears),
            marks_echoed=list(self.marks_echoed),
            marks_received=self.marks_received,
            media_bytes_received=self.media_bytes_received,
            stale_media_after_clear=self.stale_media,
            close_code=self._ws.close_code,
            stream_sid=self.stream_sid,
            call_sid=self.call_sid,
            custom_parameters=dict(self.custom_parameters),
            received=list(self.received),
            played_late=list(self.played_late),
            started_at=self._t0,
            stream_sids=list(self.stream_sids),
            digits_played=self.digits_played,
        )


# --------------------------------------------------------------------------- entry point


async def run_call(
    url: str,
    steps: list[Step],
    *,
    from_number: str | None = None,
    to_number: str | None = None,
    call_sid: str | None = None,
    custom_parameters: dict[str, str] | None = None,
    auth_token: str | None = None,
    tail: float = 0.5,
    connect_timeout: float = 10.0,
    ws_headers: dict[str, str] | None = None,
    account_sid: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    linger: float = 0.0,
    keys: list[KeysAt] | None = None,
    redirects: dict[str, Callable[[str], object]] | None = None,
    play_delay: float = 0.0,
    line: LineModel | None = None,
) -> CallResult:
    """Place one simulated call and return what was sent and heard.

    ``ws://``/``wss://``: connect straight to the media stream. ``http(s)://``:
    POST the incoming-call webhook first (signed when ``auth_token`` is given),
    follow the TwiML's ``<Connect><Stream url>`` and pass its ``<Parameter>``s
    (plus ``custom_parameters``, which win on a name clash) in
    ``start.customParameters``. Raises :class:`CallSetupError` if the call
    cannot be set up; anything after that is recorded in the result instead.
    ``ssl_context`` is used for ``https://`` and ``wss://`` (e.g. one trusting a
    self-signed certificate); without it the system's trust store is.
    ``from_number``/``to_number`` (default +15550001111 and +15550002222 on a webhook): on a ``ws(s)://``
    URL, where no webhook runs, the given ones go in ``customParameters`` as ``caller`` and ``callee``,
    as the server's TwiML would have put them.
    ``linger`` (measuring echo lines): before hanging up, send nothing more and keep
    listening until as much audio has come back as was sent, or ``linger`` seconds pass;
    without it the reply to the last frame or two is still on the wire at hang-up.
    ``keys``: key presses at set times on the caller clock, beside the script (see :class:`KeysAt`).
    ``redirects``: while the call is live, ``redirects[call_sid](twiml)`` (callable from any thread, e.g. a
    fake Twilio REST server's) replaces the call's TwiML as Twilio's REST update does (see ``_Call.redirect``).
    ``play_delay``: the server's audio (and its marks) start playing this many seconds after they arrive,
    as behind a handset's jitter buffer; ``clear`` drops what is still on its way too.
    ``line``: a :class:`LineModel` the caller's audio passes through (noise, echo of what it heard, band-limit);
    utterance bounds stay those of the clean speech each ``Say`` holds.
    """
    call_sid = call_sid or _sid("CA")
    account_sid = account_sid or _sid("AC")
    params = dict(custom_parameters or {})
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        form = _webhook_form(account_sid, call_sid, from_number or "+15550001111", to_number or "+15550002222")
        stream_url, twiml_params = await _post_webhook(url, form, auth_token, connect_timeout, ssl_context)
        params = {**twiml_params, **params}
    elif scheme in ("ws", "wss"):
        stream_url = url
        given = {"caller": from_number, "callee": to_number}
        params = {**{name: number for name, number in given.items() if number}, **params}
    else:
        raise CallSetupError(f"unsupported URL scheme {scheme!r} in {url!r}: use http(s):// or ws(s)://")

    headers = dict(ws_headers or {})
    if auth_token:
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(stream_url, {})
    ws = await _open_stream(stream_url, headers, connect_timeout, ssl_context)

    async def open_next(next_url: str) -> ClientConnection:
        resolved = _resolve_stream_url(stream_url, next_url)
        signed = dict(ws_headers or {})
        if auth_token:
            signed["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(resolved, {})
        return await _open_stream(resolved, signed, connect_timeout, ssl_context)

    call = _Call(ws, stream_sid=_sid("MZ"), call_sid=call_sid, account_sid=account_sid, custom_parameters=params,
                 opener=open_next, play_delay=play_delay, line=line)
    call.press_at(keys or [])
    loop = asyncio.get_running_loop()
    if redirects is not None:
        redirects[call_sid] = lambda twiml: asyncio.run_coroutine_threadsafe(call.redirect(twiml), loop)
    receiver: asyncio.Task[None] | None = None
    try:
        await call._start()
        receiver = asyncio.create_task(call.receive_loop())
        await call.run_steps(steps, tail)
        if linger > 0:
            await call.wait_returned(linger)
        await call.hang_up()
        await receiver
    finally:
        if receiver is not None and not receiver.done():
            receiver.cancel()
        if redirects is not None:
            redirects.pop(call_sid, None)
        await call.close()
    return call.result()


def _sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def _webhook_form(account_sid: str, call_sid: str, from_number: str, to_number: str) -> dict[str, str]:
    """The fields Twilio POSTs for a ringing inbound call (the ones a bridge looks at)."""
    return {
        "AccountSid": account_sid,
        "ApiVersion": TWILIO_API_VERSION,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": from_number,
        "To": to_number,
        "Caller": from_number,
        "Called": to_number,
    }


async def _post_webhook(
    url: str, form: dict[str, str], auth_token: str | None, timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[str, dict[str, str]]:
    """POST the webhook like Twilio and return (stream URL, stream parameters)."""
    headers = {"User-Agent": HTTP_USER_AGENT}
    if auth_token:
        headers["X-Twilio-Signature"] = RequestValidator(auth_token).compute_signature(url, form)
    try:
        # No TLS, no trust store: loading it costs ~40 ms of this event loop per call, and every other call on
        # the loop (a test or bench placing dozens) misses its 20 ms frames meanwhile.
        verify = ssl_context or urlsplit(url).scheme.lower() == "https"
        async with httpx.AsyncClient(timeout=timeout, verify=verify) as client:
            response = await client.post(url, data=form, headers=headers)
    except httpx.HTTPError as exc:
        raise CallSetupError(f"webhook {url} failed: {type(exc).__name__}: {exc}") from exc
    if response.status_code // 100 != 2:
        raise CallSetupError(
            f"webhook {url} answered {response.status_code}: {response.text[:200]!r}",
            status=response.status_code,
        )
    stream_url, params = parse_twiml(response.text)
    return _resolve_stream_url(url, stream_url), params


def parse_twiml(twiml: str) -> tuple[str, dict[str, str]]:
    """Find ``<Response><Connect><Stream url=…>`` and its ``<Parameter>``s.

    Only ``<Connect><Stream>`` gives a two-way stream; a ``<Start><Stream>``
    (listen-only) or any other answer is an error that says what was found.
    """
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise CallSetupError(f"webhook did not return XML ({exc}): {twiml[:200]!r}") from exc
    if root.tag != "Response":
        raise CallSetupError(f"TwiML root is <{root.tag}>, expected <Response>: {twiml[:200]!r}")
    stream = root.find("./Connect/Stream")
    reject = root.find("./Reject")
    if stream is None and reject is not None:
        reason = reject.get("reason", "rejected")
        raise CallSetupError(f"the line refused the call (TwiML <Reject reason={reason!r}>): the caller is "
                             "not on the allowlist, is blocked, or is over a limit (the server's log says which)")
    said = " ".join(" ".join(" ".join(say.itertext()) for say in root.findall("./Say")).split())
    if stream is None and said:
        raise CallSetupError(f"TwiML has no <Connect><Stream>: the line said {said!r} and hung up")
    if stream is None:
        one_way = root.find("./Start/Stream") is not None
        hint = " (<Start><Stream> is one-way; the bridge needs <Connect><Stream>)" if one_way else ""
        raise CallSetupError(f"TwiML has no <Connect><Stream>{hint}: {twiml[:300]!r}")
    stream_url = stream.get("url")
    if not stream_url:
        raise CallSetupError(f"<Stream> has no url attribute: {twiml[:300]!r}")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter") if p.get("name")}
    return stream_url, params


def _resolve_stream_url(webhook_url: str, stream_url: str) -> str:
    """Make a relative ``<Stream url>`` absolute against the webhook, as a ws(s) URL."""
    absolute = urljoin(webhook_url, stream_url)
    parts = urlsplit(absolute)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in ("ws", "wss"):
        raise CallSetupError(f"<Stream url> {stream_url!r} is not a ws(s) URL")
    return urlunsplit((scheme, *parts[1:]))


async def _open_stream(url: str, headers: dict[str, str], timeout: float,
                       ssl_context: ssl.SSLContext | None = None) -> ClientConnection:
    tls = {"ssl": ssl_context} if ssl_context is not None and url.lower().startswith("wss:") else {}
    try:
        return await connect(
            url,
            **tls,
            additional_headers=headers,
            user_agent_header=WS_USER_AGENT,
            open_timeout=timeout,
            max_size=None,  # Twilio accepts media payloads of any length
            compression=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise CallSetupError(f"media stream {url} refused the handshake: HTTP {status}", status=status) from exc
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise CallSetupError(f"media stream {url} unreachable: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- audio helpers


def _frames_in(seconds: float) -> int:
    return max(0, round(seconds / FRAME_SECONDS))


def _as_int16(audio: np.ndarray) -> np.ndarray:
    """Accept int16 (as documented), other ints (clipped) or floats in [-1, 1]."""
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"Say.audio must be mono (1-D), got shape {a.shape}")
    if a.dtype == np.int16:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return np.round(np.clip(a, -1.0, 1.0) * 32767).astype(np.int16)
    return np.clip(a, -32768, 32767).astype(np.int16)


def _frames_of(audio: np.ndarray) -> list[np.ndarray]:
    pad = (-len(audio)) % FRAME_SAMPLES
    padded = np.concatenate([audio, np.zeros(pad, dtype=np.int16)]) if pad else audio
    return list(padded.reshape(-1, FRAME_SAMPLES))


def _rms(frame: np.ndarray) -> float:
    return float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) if len(frame) else 0.0


def _count_loud_frames(pcm: np.ndarray) -> int:
    usable = len(pcm) - len(pcm) % FRAME_SAMPLES
    if not usable:
        return 0
    frames = pcm[:usable].astype(np.float64).reshape(-1, FRAME_SAMPLES)
    return int(np.count_nonzero(np.sqrt(np.mean(frames**2, axis=1)) > _SPEECH_RMS))


def _concat(frames: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(frames).astype(np.int16) if frames else np.zeros(0, dtype=np.int16)


def load_wav(path: str | PathLike[str]) -> np.ndarray:
    """Read a PCM WAV (8/16/24/32-bit, any channels, any rate) as int16 mono 8 kHz.

    Channels are averaged; other rates are resampled by linear interpolation
    after a short low-pass when downsampling (a simulated caller needs
    intelligible telephone audio, not studio fidelity).
    """
    with wave.open(str(path), "rb") as w:
        channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
        raw = w.readframes(w.getnframes())
    samples = _pcm_to_float(raw, width).reshape(-1, channels).mean(axis=1)
    samples = _resample(samples, rate, SAMPLE_RATE)
    return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


def _pcm_to_float(raw: bytes, width: int) -> np.ndarray:
    """WAV sample bytes → float64 on the int16 scale."""
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) * 256.0
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.float64)
    if width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return np.where(v & 0x800000, v - 0x1000000, v).astype(np.float64) / 256.0
    if width == 4:
        return np.frombuffer(raw, dtype="<i4").astype(np.float64) / 65536.0
    raise ValueError(f"unsupported WAV sample width: {width} bytes")


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target or len(x) == 0:
        return x
    if rate > target:  # windowed-sinc low-pass below the new Nyquist to limit aliasing
        cutoff = 0.45 * target / rate
        half = int(8 * rate / target)
        n = np.arange(-half, half + 1)
        taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(len(n))
        x = np.convolve(x, taps / taps.sum(), mode="same")
    count = int(round(len(x) * target / rate))
    return np.interp(np.arange(count) * (rate / target), np.arange(len(x)), x)


def save_wav(path: str | PathLike[str], pcm: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write mono int16 PCM (e.g. ``CallResult.heard``) to a WAV file."""
    data = np.asarray(pcm, dtype=np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.astype("<i2").tobytes())
