"""A protocol-faithful fake of the Gemini Live API (``BidiGenerateContent``) for offline tests.

Why a fake: the ``gemini.live`` stage wraps pipecat's ``GeminiLiveLLMService``, which
talks to Google through google-genai's ``client.aio.live.connect``. To test the stage
(reconnects, barge-in, tools, greeting) without a network or a key, something must speak
the same WebSocket dialect on 127.0.0.1. Everything here follows the wire format in
/work/shared/protocols.md section C, quirks included:

* TLS only. The SDK forces ``wss`` on ``base_url`` and always hands ``ssl=`` to
  ``websockets.connect`` (C5), so the fake serves TLS with a throwaway cert (``tls.py``)
  and exposes ``client_ssl`` for ``HttpOptions(async_client_args={"ssl": ...})``.
* Any API version in ``/ws/google.ai.generativelanguage.{ver}.GenerativeService.BidiGenerateContent``
  (google-genai 2.x defaults to v1beta, 3.x to v1); other paths get HTTP 404.
* The key comes in ``x-goog-api-key`` (SDK), ``?key=`` (raw clients) or
  ``Authorization: Token`` (ephemeral tokens); a wrong one closes the socket 1008.
* The SDK sends a mix of camelCase and snake_case keys (``realtime_input``,
  ``voice_config`` ... C4); the real server parses proto JSON and accepts both, so every
  client message is normalised to camelCase before dispatch (user data such as tool
  ``args``/``response`` and schema property names is left alone, as proto JSON does).
* Server JSON goes out in BINARY frames, as Google's server does; the first reply is
  ``{"setupComplete":{}}``; ``turnComplete`` carries ``usageMetadata`` (pipecat warns
  without it); an interrupted turn is ``interrupted`` then ``turnComplete`` with no
  ``generationComplete``.

Behaviour is scripted through :class:`GeminiScript` (keyword overrides are accepted
directly by :class:`FakeGeminiLive`), and everything the client sent is recorded in
:class:`SessionRecord` objects on ``fake.sessions``. Tests wait on state with
``await fake.wait_for(predicate)`` rather than sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import re
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import conformance
from .tls import loopback_tls

OUTPUT_RATE = 24000
"""Gemini Live always answers in PCM16LE mono at 24 kHz."""

OUTPUT_MIME = f"audio/pcm;rate={OUTPUT_RATE}"

INPUT_RATE = 16000
"""The native input rate; a mimeType without ``rate=`` is taken as this."""

PATH_RE = re.compile(
    r"^/ws/google\.ai\.generativelanguage\.(?P<version>v\d+(?:alpha|beta)?\d*)"
    r"\.GenerativeService\.(?P<method>BidiGenerateContent(?:Constrained)?)$"
)

CLIENT_MESSAGE_KINDS = ("setup", "clientContent", "realtimeInput", "toolResponse")

BAD_KEY_REASON = "API key not valid. Please pass a valid API key."
NO_KEY_REASON = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
INTERNAL_ERROR_REASON = "Internal error occurred."
DEADLINE_REASON = "Deadline expired before operation could complete."

AUDIO_TOKENS_PER_SECOND = 32
"""Gemini bills audio at 32 tokens/s; used only to make ``usageMetadata`` plausible."""

# Proto JSON keeps the keys of Struct/Value fields (user data) and of map fields verbatim;
# only message field names are converted. These are the ones a Live client can send.
_OPAQUE_FIELDS = frozenset({"args", "response", "parametersJsonSchema", "responseJsonSchema", "default", "example"})
_MAP_FIELDS = frozenset({"properties"})

FailMode = Literal["refuse", "drop_after_setup"]


# --------------------------------------------------------------------------- wire helpers


def snake_to_camel(key: str) -> str:
    """``realtime_input`` → ``realtimeInput``; camelCase keys pass through unchanged."""
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def normalise_keys(value: Any) -> Any:
    """Recursively rename snake_case message fields to lowerCamel, like proto JSON parsing.

    Why: google-genai emits mixed naming (protocols.md C4) and the real server accepts
    both, so the fake must too — but it must not rename what is user data: tool call
    ``args``, function ``response`` payloads, JSON schemas, and the property names of a
    ``Schema.properties`` map.
    """
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = snake_to_camel(key)
            if name in _OPAQUE_FIELDS:
                out[name] = item
            elif name in _MAP_FIELDS and isinstance(item, dict):
                out[name] = {k: normalise_keys(v) for k, v in item.items()}
            else:
                out[name] = normalise_keys(item)
        return out
    if isinstance(value, list):
        return [normalise_keys(item) for item in value]
    return value


def decode_proto_bytes(text: str) -> bytes:
    """Decode a proto-JSON ``bytes`` field: standard or URL-safe base64, padded or not.

    Why: proto JSON parsers (the real server) accept all four forms, and google-genai 2.x
    serialises ``Blob.data`` through pydantic as URL-safe base64 (``-``/``_``), which
    ``base64.b64decode`` would silently corrupt by dropping those characters.
    """
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def rate_from_mime(mime: str) -> int | None:
    """Sample rate from ``audio/pcm;rate=16000``; ``audio/pcm`` alone means 16 kHz; None if not PCM."""
    kind, *params = [p.strip() for p in mime.split(";")]
    if kind.lower() not in ("audio/pcm", "audio/l16"):
        return None
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "rate" and value.strip().isdigit():
            return int(value)
    return INPUT_RATE


def tone(seconds: float = 1.5, freq: float = 440.0, dbfs: float = -12.0, rate: int = OUTPUT_RATE) -> bytes:
    """A sine tone as PCM16LE with 5 ms fades (no clicks), peak at ``dbfs``: the default reply voice."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    x = np.sin(2 * np.pi * freq * t) * (10 ** (dbfs / 20))
    fade = min(n // 2, int(0.005 * rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
    return (x * 32767).astype("<i2").tobytes()


def _audio_parts(chunk: bytes, count: int) -> list[dict[str, Any]]:
    """One chunk of reply audio as ``count`` consecutive ``inlineData`` parts (whole samples each)."""
    samples = len(chunk) // 2
    bounds = [round(samples * i / max(1, count)) * 2 for i in range(max(1, count) + 1)]
    return [{"inlineData": {"mimeType": OUTPUT_MIME, "data": base64.b64encode(chunk[a:b]).decode("ascii")}}
            for a, b in zip(bounds, bounds[1:]) if b > a]


def _duration_string(seconds: float) -> str:
    """google.protobuf.Duration JSON form: ``"1s"``, ``"0.5s"``."""
    return f"{seconds:g}s"


class EnergyVad:
    """The fake's stand-in for Gemini's server-side activity detection.

    Why so crude: the fake only has to decide "the caller started talking" (barge-in)
    and "the caller stopped" (time to answer) on clean test speech. It works in 10 ms
    frames of whatever rate arrives: a frame is voiced when its RMS exceeds
    ``threshold_dbfs``; speech starts after ``min_speech_ms`` of consecutive voiced
    frames and ends after ``silence_ms`` of consecutive unvoiced ones. Times are audio
    time (samples received), not wall clock, like a real server-side VAD.
    """

    def __init__(self, threshold_dbfs: float, min_speech_ms: float, silence_ms: float) -> None:
        self.threshold = 10 ** (threshold_dbfs / 20) * 32768
        self.min_speech_ms = min_speech_ms
        self.silence_ms = silence_ms
        self.speaking = False
        self._voiced_ms = 0.0
        self._quiet_ms = 0.0
        self._rate = 0
        self._rest = b""
        self.audio_ms = 0.0

    def feed(self, pcm: bytes, rate: int) -> list[tuple[str, float]]:
        """Consume PCM16LE; return ``("start"|"end", audio_ms)`` events in order."""
        if rate != self._rate:
            self._rate, self._rest = rate, b""
        data = self._rest + pcm
        step = rate // 100 * 2
        usable = len(data) - len(data) % step
        self._rest = data[usable:]
        events: list[tuple[str, float]] = []
        if not usable:
            return events
        frames = np.frombuffer(data[:usable], "<i2").astype(np.float64).reshape(-1, step // 2)
        for rms in np.sqrt((frames**2).mean(axis=1)):
            self.audio_ms += 10.0
            if rms >= self.threshold:
                self._voiced_ms += 10.0
                self._quiet_ms = 0.0
                if not self.speaking and self._voiced_ms >= self.min_speech_ms:
                    self.speaking = True
                    events.append(("start", self.audio_ms))
            else:
                self._quiet_ms += 10.0
                self._voiced_ms = 0.0
                if self.speaking and self._quiet_ms >= self.silence_ms:
                    self.speaking = False
                    events.append(("end", self.audio_ms))
        return events

    def force_end(self) -> list[tuple[str, float]]:
        """``audioStreamEnd``: the client says no more audio is coming for now."""
        self._voiced_ms = self._quiet_ms = 0.0
        if self.speaking:
            self.speaking = False
            return [("end", self.audio_ms)]
        return []


# --------------------------------------------------------------------------- script and records


@dataclass
class GeminiScript:
    """How the fake behaves. Every field can also be passed to ``FakeGeminiLive(**kw)``."""

    api_key: str | None = "test-key"
    """Expected key (header ``x-goog-api-key``, ``?key=`` or ``Authorization: Token``); None = any."""
    models: frozenset[str] | None = None
    """If set, ``setup.model`` must be one of these (``models/...``) or the socket closes 1008."""
    reply_audio: bytes | np.ndarray | None = None
    """Reply voice as 24 kHz PCM16 (bytes or int16 array); default: 1.5 s of 440 Hz at -12 dBFS."""
    reply_text: str = "Hello! How can I help you today?"
    """Sent as ``outputTranscription`` before each reply's audio."""
    input_text: str = "hello world"
    """Sent as ``inputTranscription`` when the caller's turn ends (speech or activityEnd)."""
    chunk_ms: int = 40
    """Reply audio per ``inlineData`` part (real chunk sizes vary; clients must not rely on them)."""
    pace: float = 2.0
    """Reply streaming speed as a multiple of real time (the model streams ahead); <=0 = no pacing."""
    latency_ms: float = 100.0
    """Model "thinking" time between the end of the caller's turn and the first reply message."""
    silence_ms: float = 500.0
    """End-of-speech silence when setup gives no ``silenceDurationMs`` (setup's value wins)."""
    speech_threshold_dbfs: float = -40.0
    """Energy VAD: RMS per 10 ms frame above this counts as voiced."""
    min_speech_ms: float = 60.0
    """Energy VAD: voiced audio needed before speech (and barge-in) is declared."""
    tool_call: dict[str, Any] | None = None
    """``{"name": ..., "args": {...}}``: on reply number ``tool_call_turn`` send a toolCall first
    and speak only after the matching toolResponse."""
    tool_call_turn: int = 1
    """Which conversation turn (1-based, counted across resumed sessions) makes the tool call."""
    go_away_after_turns: int | None = None
    """After this many completed turns on one connection: send goAway, then close."""
    go_away_time_left: float = 1.0
    """``goAway.timeLeft`` in seconds, and how long until the connection is actually closed."""
    go_away_close: tuple[int, str] = (1011, DEADLINE_REASON)
    """Close code and reason used when the goAway deadline passes (the session-limit close)."""
    go_away_at_reply_ms: float | None = None
    """Send goAway (once per fake) in the middle of reply number ``go_away_turn``, once this many ms of its
    audio are out; the reply goes on streaming until the connection is cut ``go_away_time_left`` later."""
    go_away_turn: int = 1
    """Which conversation turn (1-based) ``go_away_at_reply_ms`` applies to."""
    tool_cancel_after_ms: float | None = None
    """With ``tool_call``: the model withdraws its call this long after making it (``toolCallCancellation``),
    whatever the client answered meanwhile, and ends the turn without speaking."""
    parts_per_message: int = 1
    """Reply audio of one chunk is split over this many ``inlineData`` parts of one ``modelTurn`` message."""
    text_parts: tuple[str, ...] = ()
    """``text`` parts put ahead of the audio parts in each reply's first ``modelTurn`` message."""
    fail: FailMode | None = None
    """``"refuse"``: close 1008 before setupComplete; ``"drop_after_setup"``: close 1011 as
    soon as the first reply's first audio chunk is out."""
    unknown_handle_close: tuple[int, str] = (1008, "Invalid session resumption handle.")
    resume_setup_delay_ms: float = 0.0
    """How long a setup that resumes a session (with a handle) waits for ``setupComplete``: restoring state."""
    """What a setup with a handle the fake never issued gets (reason text is the fake's own)."""


@dataclass
class ReplyRecord:
    """One model turn as the fake played it."""

    turn: int
    """Conversation-wide turn number (continues across resumed sessions)."""
    trigger: str
    """What started it: ``speech``, ``activityEnd``, ``audioStreamEnd``, ``clientContent``, ``text``."""
    tool_call: dict[str, Any] | None = None
    tool_response: dict[str, Any] | None = None
    tool_cancelled: bool = False
    audio_ms_sent: float = 0.0
    interrupted: bool = False
    interrupted_at_ms: float | None = None
    """Milliseconds of reply audio that had been sent when the barge-in arrived."""
    completed: bool = False
    """``turnComplete`` has been sent."""


@dataclass
class SessionRecord:
    """Everything one WebSocket connection did; ``fake.sessions[i]``."""

    index: int
    path: str
    api_version: str
    method: str
    headers: dict[str, str]
    api_key: str | None
    setup: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Every client message after normalisation, in arrival order."""
    raw_frames: list[str | bytes] = field(default_factory=list)
    """Every client frame as received (text frames are ``str``)."""
    audio_chunks: list[tuple[int, bytes]] = field(default_factory=list)
    audio_rates: set[int] = field(default_factory=set)
    other_media: list[str] = field(default_factory=list)
    """mimeTypes of non-audio realtime media (video frames)."""
    client_contents: list[dict[str, Any]] = field(default_factory=list)
    realtime_texts: list[str] = field(default_factory=list)
    tool_responses: list[dict[str, Any]] = field(default_factory=list)
    activity: list[str] = field(default_factory=list)
    """``activityStart`` / ``activityEnd`` / ``audioStreamEnd`` in arrival order."""
    vad_events: list[tuple[str, float]] = field(default_factory=list)
    """The fake's own energy-VAD decisions: ``("start"|"end", audio_ms)``."""
    resumption_handle: str | None = None
    """The handle the client gave in ``setup.sessionResumption.handle``."""
    resumed: bool = False
    turns_at_start: int = 0
    """Conversation turns already done when this session started (non-zero when resumed)."""
    conversation_id: int = 0
    issued_handles: list[str] = field(default_factory=list)
    replies: list[ReplyRecord] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Every server message sent, in order."""
    go_away_sent: bool = False
    go_away_at: float | None = None
    """``time.monotonic()`` when goAway went out."""
    audio_ms_at_go_away: float | None = None
    """Milliseconds of client audio received before goAway went out."""
    cancelled_call_ids: list[str] = field(default_factory=list)
    """Tool call ids this session withdrew with ``toolCallCancellation``."""
    quirks: set[str] = field(default_factory=set)
    """Legal-but-unusual encodings seen: ``snake_case`` keys, ``urlsafe_base64`` bytes."""
    protocol_errors: list[str] = field(default_factory=list)
    """Off-spec things the client did that the real server would reject or ignore."""
    closed_code: int | None = None
    closed_reason: str = ""
    closed: bool = False
    _conversation: _Conversation | None = field(default=None, repr=False)

    @property
    def audio_in(self) -> bytes:
        """All received PCM16 audio, concatenated (check ``audio_rates`` for its rate)."""
        return b"".join(chunk for _, chunk in self.audio_chunks)

    def audio_ms(self) -> float:
        """Milliseconds of audio received."""
        return sum(len(chunk) / 2 / rate * 1000 for rate, chunk in self.audio_chunks)

    @property
    def model(self) -> str | None:
        return self.setup.get("model")

    @property
    def voice(self) -> str | None:
        return (
            self.setup.get("generationConfig", {})
            .get("speechConfig", {})
            .get("voiceConfig", {})
            .get("prebuiltVoiceConfig", {})
            .get("voiceName")
        )

    @property
    def automatic_activity_detection(self) -> bool:
        """False when setup disabled server VAD (then the client must send activityStart/End)."""
        aad = self.setup.get("realtimeInputConfig", {}).get("automaticActivityDetection", {})
        return not aad.get("disabled", False)

    @property
    def interrupted_at_ms(self) -> float | None:
        """Reply audio sent (ms) at the first barge-in of this session, if any."""
        for reply in self.replies:
            if reply.interrupted:
                return reply.interrupted_at_ms
        return None

    @property
    def turns(self) -> int:
        """Conversation-wide completed turns (continues across resumption)."""
        return self._conversation.turns if self._conversation else self.turns_at_start

    @property
    def completed_replies(self) -> list[ReplyRecord]:
        return [r for r in self.replies if r.completed]


@dataclass
class _Conversation:
    """State a resumption handle restores: what the model "remembers"."""

    id: int
    turns: int = 0
    history: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- the server


class FakeGeminiLive:
    """``async with FakeGeminiLive(tool_call=..., ...) as fake:`` — a Gemini Live server on 127.0.0.1.

    Point google-genai at it with::

        genai.Client(api_key="test-key", http_options=types.HttpOptions(
            base_url=fake.base_url, api_version="v1beta",
            async_client_args={"ssl": fake.client_ssl}))
    """

    def __init__(self, script: GeminiScript | None = None, **options: Any) -> None:
        self.script = dataclasses.replace(script or GeminiScript(), **options)
        audio = self.script.reply_audio
        if audio is None:
            self.reply_pcm = tone()
        elif isinstance(audio, np.ndarray):
            self.reply_pcm = audio.astype("<i2").tobytes()
        else:
            self.reply_pcm = bytes(audio)
        self.sessions: list[SessionRecord] = []
        self._handles: dict[str, _Conversation] = {}
        self._conversations = 0
        self._changed = asyncio.Event()
        self._server: Server | None = None
        self._port = 0
        self._tls = loopback_tls()
        self._dropped_once = False
        self._went_away_mid_reply = False
        self._tool_calls = 0

    # ------------------------------------------------------------------ public surface

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT`` — no trailing slash (the SDK would make ``//ws/...``)."""
        return f"https://127.0.0.1:{self._port}"

    @property
    def ws_url(self) -> str:
        """The full v1beta endpoint, for raw websocket clients."""
        return f"wss://127.0.0.1:{self._port}/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"

    @property
    def port(self) -> int:
        return self._port

    @property
    def client_ssl(self) -> ssl.SSLContext:
        """Client context trusting the fake's cert: ``async_client_args={"ssl": fake.client_ssl}``."""
        return self._tls.client

    @property
    def ca_path(self) -> str:
        """PEM of the fake's cert (e.g. for ``SSL_CERT_FILE``)."""
        return self._tls.ca_path

    @property
    def issued_handles(self) -> list[str]:
        return list(self._handles)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        """Wait until ``predicate()`` holds; it is re-checked after every change the fake records."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    if predicate():
                        return
                    await changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: {self.summary()}") from None

    async def session(self, index: int, timeout: float = 10.0) -> SessionRecord:
        """The ``index``-th session once its setup has arrived."""
        await self.wait_for(lambda: len(self.sessions) > index and bool(self.sessions[index].setup),
                            timeout, f"session {index} setup")
        return self.sessions[index]

    def summary(self) -> str:
        """Short state dump for assertion messages."""
        parts = []
        for s in self.sessions:
            parts.append(
                f"#{s.index}(setup={bool(s.setup)} audio={s.audio_ms():.0f}ms acts={s.activity} "
                f"vad={s.vad_events} replies={[(r.turn, r.trigger, r.completed, r.interrupted) for r in s.replies]} "
                f"closed={s.closed_code} errors={s.protocol_errors})"
            )
        return "; ".join(parts) or "no sessions"

    async def __aenter__(self) -> FakeGeminiLive:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            ssl=self._tls.server,
            process_request=self._check_path,
            max_size=16 * 2**20,
        )
        self._port = self._server.sockets[0].getsockname()[1]  # type: ignore[index]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close(close_connections=True)
        await self._server.wait_closed()

    # ------------------------------------------------------------------ internals

    def _touch(self) -> None:
        """Wake every ``wait_for``: something was recorded."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        """Unknown paths fail the HTTP upgrade with 404, as Google's front end does."""
        if PATH_RE.match(urlsplit(request.path).path):
            return None
        return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")

    def _new_conversation(self) -> _Conversation:
        self._conversations += 1
        return _Conversation(id=self._conversations)

    def _issue_handle(self, conversation: _Conversation) -> str:
        handle = f"fake-handle-{uuid.uuid4().hex}"
        self._handles[handle] = conversation
        return handle

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        url = urlsplit(request.path)
        match = PATH_RE.match(url.path)
        assert match is not None
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        key = headers.get("x-goog-api-key") or (parse_qs(url.query).get("key") or [None])[0]
        auth = headers.get("authorization", "")
        if key is None and auth.startswith("Token "):
            key = auth[len("Token "):]
        session = SessionRecord(
            index=len(self.sessions),
            path=request.path,
            api_version=match["version"],
            method=match["method"],
            headers=headers,
            api_key=key,
        )
        self.sessions.append(session)
        self._touch()
        connection = _Connection(self, ws, session)
        try:
            await connection.run()
        except ConnectionClosed:
            pass
        finally:
            await connection.stop()
            await ws.close()
            session.closed = True
            if connection.sent_close is not None:
                session.closed_code, session.closed_reason = connection.sent_close
            else:
                session.closed_code = ws.close_code
                session.closed_reason = ws.close_reason or ""
            self._touch()


class _Connection:
    """One client connection: the reader loop plus the reply state machine."""

    def __init__(self, fake: FakeGeminiLive, ws: ServerConnection, session: SessionRecord) -> None:
        self.fake = fake
        self.script = fake.script
        self.ws = ws
        self.session = session
        self.conversation: _Conversation | None = None
        self.vad: EnergyVad | None = None
        self.reply_task: asyncio.Task[None] | None = None
        self.reply: ReplyRecord | None = None
        self.interrupt = asyncio.Event()
        self.tool_response: asyncio.Future[dict[str, Any]] | None = None
        self.pending_call_id: str | None = None
        self.queued_trigger: str | None = None
        self.turns_here = 0
        self.in_activity = False
        self.user_audio_ms_since_reply = 0.0
        self.send_lock = asyncio.Lock()
        self.sent_close: tuple[int, str] | None = None
        self.background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ plumbing

    async def send(self, message: dict[str, Any]) -> None:
        """One JSON object per BINARY frame, as Google's server sends them."""
        payload = json.dumps(message, separators=(",", ":"))
        conformance.record("gemini", "server", payload)
        async with self.send_lock:
            await self.ws.send(payload.encode())
        self.session.sent.append(message)
        self.fake._touch()

    async def close(self, code: int, reason: str) -> None:
        """Server-initiated close; shielded so tearing down the connection's tasks can't cut it short."""
        if self.sent_close is None:
            self.sent_close = (code, reason)
        await asyncio.shield(self.ws.close(code, reason))

    async def recv_message(self) -> dict[str, Any]:
        raw = await self.ws.recv()
        conformance.record("gemini", "client", raw)
        self.session.raw_frames.append(raw)
        try:
            decoded = json.loads(raw)
        except ValueError:
            self.session.protocol_errors.append(f"not JSON: {raw[:80]!r}")
            decoded = {}
        message = normalise_keys(decoded) if isinstance(decoded, dict) else {}
        if message != decoded:
            self.session.quirks.add("snake_case")
        self.session.messages.append(message)
        self.fake._touch()
        return message

    async def stop(self) -> None:
        tasks = [t for t in (self.reply_task, *self.background) if t is not None and not t.done()]
        for task in tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ session start

    async def run(self) -> None:
        script, session = self.script, self.session
        if script.fail == "refuse":
            await self._close_before_setup(1008, BAD_KEY_REASON)
            return
        if script.api_key is not None and session.api_key != script.api_key:
            await self._close_before_setup(1008, NO_KEY_REASON if not session.api_key else BAD_KEY_REASON)
            return

        first = await self.recv_message()
        kinds = [k for k in CLIENT_MESSAGE_KINDS if k in first]
        if kinds != ["setup"]:
            session.protocol_errors.append(f"first message must be setup, got {list(first)}")
            await self.close(1007, "Request contains an invalid argument.")
            return
        session.setup = first["setup"]
        model = session.setup.get("model", "")
        if not str(model).startswith("models/"):
            session.protocol_errors.append(f"setup.model must start with models/: {model!r}")
        if script.models is not None and model not in script.models:
            await self.close(1008, f"{model} is not found for API version {session.api_version}, "
                                   "or is not supported for bidiGenerateContent.")
            return

        handle = session.setup.get("sessionResumption", {}).get("handle")
        session.resumption_handle = handle
        if handle:
            conversation = self.fake._handles.get(handle)
            if conversation is None:
                await self.close(*script.unknown_handle_close)
                return
            session.resumed = True
            await asyncio.sleep(script.resume_setup_delay_ms / 1000)
        else:
            conversation = self.fake._new_conversation()
        self.conversation = conversation
        session._conversation = conversation
        session.conversation_id = conversation.id
        session.turns_at_start = conversation.turns

        aad = session.setup.get("realtimeInputConfig", {}).get("automaticActivityDetection", {})
        silence = aad.get("silenceDurationMs", script.silence_ms)
        self.vad = EnergyVad(script.speech_threshold_dbfs, script.min_speech_ms, float(silence))
        await self.send({"setupComplete": {}})

        while True:
            message = await self.recv_message()
            await self.dispatch(message)

    async def _close_before_setup(self, code: int, reason: str) -> None:
        """Reject the session the way the real API does: the upgrade succeeds, then a close frame.

        The close is sent once the client's first frame (its setup) has landed, or after 1 s.
        Why wait: google-genai sends setup right after the handshake without guarding the
        send; a close that overtakes it surfaces as a raw ConnectionClosed from ``ws.send``
        instead of the ``APIError(1008, ...)`` the SDK raises from its setup ``recv``.
        """
        try:
            async with asyncio.timeout(1.0):
                await self.recv_message()
        except TimeoutError:
            pass
        await self.close(code, reason)

    # ------------------------------------------------------------------ dispatch

    async def dispatch(self, message: dict[str, Any]) -> None:
        kinds = [k for k in CLIENT_MESSAGE_KINDS if k in message]
        if len(kinds) != 1:
            self.session.protocol_errors.append(f"message must hold exactly one of {CLIENT_MESSAGE_KINDS}: {list(message)}")
            return
        kind = kinds[0]
        body = message[kind]
        if kind == "setup":
            self.session.protocol_errors.append("second setup message")
        elif kind == "realtimeInput":
            await self.on_realtime_input(body)
        elif kind == "clientContent":
            await self.on_client_content(body)
        elif kind == "toolResponse":
            self.on_tool_response(body)

    async def on_realtime_input(self, body: dict[str, Any]) -> None:
        session = self.session
        blobs: list[dict[str, Any]] = []
        if "audio" in body:
            blobs.append(body["audio"])
        blobs.extend(body.get("mediaChunks") or [])
        if "video" in body:
            blobs.append(body["video"])
        for blob in blobs:
            mime = blob.get("mimeType", "")
            rate = rate_from_mime(mime)
            if rate is None:
                session.other_media.append(mime)
                continue
            data = blob.get("data", "")
            if "-" in data or "_" in data:
                session.quirks.add("urlsafe_base64")
            try:
                pcm = decode_proto_bytes(data)
            except (binascii.Error, ValueError):
                session.protocol_errors.append(f"realtimeInput data is not base64: {data[:40]!r}")
                await self.close(1007, "Request contains an invalid argument.")
                return
            session.audio_chunks.append((rate, pcm))
            session.audio_rates.add(rate)
            self.user_audio_ms_since_reply += len(pcm) / 2 / rate * 1000
            if session.automatic_activity_detection:
                assert self.vad is not None
                for event in self.vad.feed(pcm, rate):
                    await self.on_vad(event, "speech")

        for signal in ("activityStart", "activityEnd"):
            if signal in body:
                session.activity.append(signal)
                if session.automatic_activity_detection:
                    # Only allowed with automatic detection disabled (types.py); not closing,
                    # since the real server's exact reaction is unverified.
                    session.protocol_errors.append(f"{signal} sent while automatic activity detection is enabled")
                elif signal == "activityStart":
                    self.in_activity = True
                    self.barge_in()
                else:
                    self.in_activity = False
                    await self.caller_turn_ended("activityEnd")
        if body.get("audioStreamEnd"):
            session.activity.append("audioStreamEnd")
            if not session.automatic_activity_detection:
                session.protocol_errors.append("audioStreamEnd sent while automatic activity detection is disabled")
            elif self.vad is not None:
                for event in self.vad.force_end():
                    await self.on_vad(event, "audioStreamEnd")
        if "text" in body:
            session.realtime_texts.append(body["text"])
            if self.conversation is not None:
                self.conversation.history.append(("user", body["text"]))
            # Realtime text is user input: it asks for a reply, unless a reply for the
            # current turn is already coming (pipecat's Gemini-3 " " nudge after clientContent).
            if self.reply_task is None or self.reply_task.done():
                self.start_reply("text")
        self.fake._touch()

    async def on_vad(self, event: tuple[str, float], trigger: str) -> None:
        self.session.vad_events.append(event)
        if event[0] == "start":
            self.barge_in()
        else:
            await self.caller_turn_ended(trigger)

    async def caller_turn_ended(self, trigger: str) -> None:
        """The caller finished speaking: transcript, then a reply (queued if one is playing)."""
        await self.send({"serverContent": {"inputTranscription": {"text": self.script.input_text}}})
        if self.conversation is not None:
            self.conversation.history.append(("user", self.script.input_text))
        if self.reply_task is not None and not self.reply_task.done():
            self.queued_trigger = trigger
        else:
            self.start_reply(trigger)

    async def on_client_content(self, body: dict[str, Any]) -> None:
        self.session.client_contents.append(body)
        if self.conversation is not None:
            for turn in body.get("turns") or []:
                text = " ".join(p.get("text", "") for p in turn.get("parts", []) if "text" in p)
                self.conversation.history.append((turn.get("role", "user"), text))
        if body.get("turnComplete") and (self.reply_task is None or self.reply_task.done()):
            self.start_reply("clientContent")

    def on_tool_response(self, body: dict[str, Any]) -> None:
        self.session.tool_responses.append(body)
        for response in body.get("functionResponses") or []:
            if (
                self.pending_call_id is not None
                and response.get("id") == self.pending_call_id
                and self.tool_response is not None
                and not self.tool_response.done()
            ):
                self.tool_response.set_result(response)

    # ------------------------------------------------------------------ replies

    def barge_in(self) -> None:
        """Caller activity while the model is generating/speaking cuts it off (unless NO_INTERRUPTION)."""
        handling = self.session.setup.get("realtimeInputConfig", {}).get("activityHandling")
        if handling == "NO_INTERRUPTION":
            return
        if self.reply_task is not None and not self.reply_task.done():
            self.interrupt.set()

    def start_reply(self, trigger: str) -> None:
        assert self.conversation is not None
        self.interrupt = asyncio.Event()
        reply = ReplyRecord(turn=self.conversation.turns + 1, trigger=trigger)
        self.reply = reply
        self.session.replies.append(reply)
        self.reply_task = asyncio.ensure_future(self._play(reply))
        self.fake._touch()

    async def _wait_or_interrupt(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if a barge-in arrived meanwhile."""
        if self.interrupt.is_set():
            return True
        if seconds <= 0:
            await asyncio.sleep(0)
            return self.interrupt.is_set()
        try:
            async with asyncio.timeout(seconds):
                await self.interrupt.wait()
            return True
        except TimeoutError:
            return False

    async def _play(self, reply: ReplyRecord) -> None:
        try:
            await self._play_inner(reply)
        except ConnectionClosed:
            return
        except Exception as e:
            # Surface bugs in the fake itself where tests look (they assert no protocol errors).
            self.session.protocol_errors.append(f"fake error while replying: {e!r}")
            self.fake._touch()
            raise
        if self.queued_trigger and not self.ws.close_code:
            trigger, self.queued_trigger = self.queued_trigger, None
            self.start_reply(trigger)

    async def _play_inner(self, reply: ReplyRecord) -> None:
        script, fake = self.script, self.fake
        if await self._wait_or_interrupt(script.latency_ms / 1000):
            await self._finish(reply, interrupted=True)
            return

        if script.tool_call is not None and reply.turn == script.tool_call_turn:
            fake._tool_calls += 1
            call_id = f"fc{fake._tool_calls}"
            call = {"id": call_id, "name": script.tool_call["name"], "args": script.tool_call.get("args", {})}
            reply.tool_call = call
            self.pending_call_id = call_id
            self.tool_response = asyncio.get_running_loop().create_future()
            await self.send({"toolCall": {"functionCalls": [call]}})
            if "sessionResumption" in self.session.setup:
                # While a call is open the session cannot be resumed: proto3 JSON of
                # {resumable: false, newHandle: ""} is an empty object.
                await self.send({"sessionResumptionUpdate": {}})
            if script.tool_cancel_after_ms is not None:
                await self._withdraw_tool_call(reply, call_id)
                return
            waiter = asyncio.ensure_future(self.interrupt.wait())
            done, _ = await asyncio.wait({self.tool_response, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            self.pending_call_id = None
            if self.tool_response not in done:
                reply.tool_cancelled = True
                self.session.cancelled_call_ids.append(call_id)
                await self.send({"toolCallCancellation": {"ids": [call_id]}})
                await self._finish(reply, interrupted=True)
                return
            reply.tool_response = self.tool_response.result()
            if await self._wait_or_interrupt(script.latency_ms / 1000):
                await self._finish(reply, interrupted=True)
                return

        await self.send({"serverContent": {"outputTranscription": {"text": script.reply_text}}})
        step = OUTPUT_RATE * script.chunk_ms // 1000 * 2
        pcm = fake.reply_pcm
        start = time.monotonic()
        for offset in range(0, len(pcm), step):
            chunk = pcm[offset:offset + step]
            texts = [{"text": text} for text in script.text_parts] if offset == 0 else []
            await self.send({"serverContent": {"modelTurn": {"parts": texts + _audio_parts(chunk, script.parts_per_message)}}})
            reply.audio_ms_sent += len(chunk) / 2 / OUTPUT_RATE * 1000
            if (script.go_away_at_reply_ms is not None and reply.turn == script.go_away_turn
                    and reply.audio_ms_sent >= script.go_away_at_reply_ms and not fake._went_away_mid_reply):
                fake._went_away_mid_reply = True
                await self._go_away()
            if script.fail == "drop_after_setup" and not fake._dropped_once:
                fake._dropped_once = True
                await self.close(1011, INTERNAL_ERROR_REASON)
                return
            due = (reply.audio_ms_sent / 1000 / script.pace) if script.pace > 0 else 0.0
            if await self._wait_or_interrupt(start + due - time.monotonic()):
                await self._finish(reply, interrupted=True)
                return
        await self.send({"serverContent": {"generationComplete": True}})
        await self._finish(reply, interrupted=False)

    async def _finish(self, reply: ReplyRecord, interrupted: bool) -> None:
        """Close the turn the way the server does, then hand out a resumption handle."""
        assert self.conversation is not None
        if interrupted:
            reply.interrupted = True
            reply.interrupted_at_ms = reply.audio_ms_sent
            await self.send({"serverContent": {"interrupted": True}})
        prompt = max(1, round(self.user_audio_ms_since_reply / 1000 * AUDIO_TOKENS_PER_SECOND))
        response = round(reply.audio_ms_sent / 1000 * AUDIO_TOKENS_PER_SECOND)
        self.user_audio_ms_since_reply = 0.0
        await self.send({
            "serverContent": {"turnComplete": True},
            "usageMetadata": {
                "promptTokenCount": prompt,
                "responseTokenCount": response,
                "totalTokenCount": prompt + response,
                "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": prompt}],
                "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": response}],
            },
        })
        reply.completed = True
        self.conversation.turns += 1
        self.conversation.history.append(("model", self.script.reply_text))
        self.turns_here += 1
        if "sessionResumption" in self.session.setup:
            handle = self.fake._issue_handle(self.conversation)
            self.session.issued_handles.append(handle)
            await self.send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})
        limit = self.script.go_away_after_turns
        if limit is not None and self.turns_here >= limit and not self.session.go_away_sent:
            await self._go_away()
        self.fake._touch()

    async def _go_away(self) -> None:
        """Announce the session's end, then cut it when ``timeLeft`` has passed (whatever is under way)."""
        self.session.go_away_sent = True
        self.session.go_away_at = time.monotonic()
        self.session.audio_ms_at_go_away = self.session.audio_ms()
        await self.send({"goAway": {"timeLeft": _duration_string(self.script.go_away_time_left)}})
        task = asyncio.ensure_future(self._close_after_go_away())
        self.background.add(task)

    async def _withdraw_tool_call(self, reply: ReplyRecord, call_id: str) -> None:
        """The model takes its call back (``toolCallCancellation``) and ends the turn without speaking."""
        assert self.script.tool_cancel_after_ms is not None
        interrupted = await self._wait_or_interrupt(self.script.tool_cancel_after_ms / 1000)
        self.pending_call_id = None
        reply.tool_cancelled = True
        self.session.cancelled_call_ids.append(call_id)
        await self.send({"toolCallCancellation": {"ids": [call_id]}})
        await self._finish(reply, interrupted=interrupted)

    async def _close_after_go_away(self) -> None:
        await asyncio.sleep(self.script.go_away_time_left)
        self.queued_trigger = None
        if self.reply_task is not None and not self.reply_task.done() and self.reply_task is not asyncio.current_task():
            self.reply_task.cancel()
        await self.close(*self.script.go_away_close)


__all__ = [
    "FakeGeminiLive",
    "GeminiScript",
    "ReplyRecord",
    "SessionRecord",
    "EnergyVad",
    "normalise_keys",
    "snake_to_camel",
    "rate_from_mime",
    "decode_proto_bytes",
    "tone",
    "OUTPUT_RATE",
    "INPUT_RATE",
]
