"""A fake OpenAI Realtime API (GA shape) on plain ``ws://127.0.0.1``, for offline tests.

Why it exists: the ``openai.realtime`` stage wraps pipecat's
``OpenAIRealtimeLLMService``; testing it against the real API needs a key, costs money
and is not deterministic. This server speaks the GA wire protocol (protocols.md D:
``response.output_audio.delta``, ``conversation.item.added/done``, ``session.type =
"realtime"``, ``audio.input/output.format`` objects) and nothing else, so a client that
slips back to beta names or shapes fails here the way it would fail in production.

What is faithful, and where it comes from
-----------------------------------------
* Endpoint ``/v1/realtime?model=…``; ``Authorization: Bearer <key>``.
* A wrong or missing key does NOT fail the handshake: the real API completes the
  upgrade, sends one ``error`` (``invalid_request_error`` / ``invalid_api_key``, "Incorrect
  API key provided: …") and closes with code 3000, reason
  ``invalid_request_error.invalid_api_key`` (several independent client logs show exactly
  this, e.g. twilio-samples/speech-assistant-openai-realtime-api-python#4). An HTTP 401
  on the handshake is what a gateway/proxy in front of it may do; that is
  ``fail="refuse"``.
* ``OpenAI-Beta`` header or a missing ``?model=`` → ``error`` + close 4000 (protocols.md D1).
* First server event ``session.created`` with the full session object; ``session.update``
  → ``session.updated`` with the full *effective* config. The update is validated like
  the GA server: beta keys (``modalities``, ``voice``, ``input_audio_format``,
  ``turn_detection`` at the top level, …) → ``unknown_parameter`` "Unknown parameter:
  'session.modalities'."; no ``session.type`` → ``missing_required_parameter``; a rejected
  update changes nothing. Voice is fixed once assistant audio exists
  (``cannot_update_voice``).
* Errors echo the client's ``event_id`` in ``error.event_id`` (pipecat relies on that for
  ``conversation.item.retrieve``). Codes used: ``response_cancel_not_active``
  ("Cancellation failed: no active response found"),
  ``conversation_already_has_active_response``, ``item_truncate_invalid_item_id``,
  ``item_retrieve_invalid_item_id``, ``input_audio_buffer_commit_empty``, ``invalid_value``
  (truncate past the audio: "Audio content of Xms is already shorter than Yms"). Codes
  seen in real clients' handling code; where no source gave a message, the wording is
  this fake's own (do not match on messages, match on codes).
* Server VAD is a small energy detector on the decoded input (it is *not* OpenAI's
  model): ``speech_started {audio_start_ms (prefix padding included), item_id}``,
  ``speech_stopped {audio_end_ms (silence included), item_id}``, ``committed``, the user
  item ``conversation.item.added/done``, then a response if ``create_response``. Times are
  on the audio clock (ms of audio appended), not the wall clock, so tests may stream
  faster than real time and still get deterministic numbers.
* A response is the GA sequence: ``response.created`` → ``response.output_item.added`` →
  ``conversation.item.added`` → ``response.content_part.added`` →
  ``response.output_audio.delta`` ×N (+ ``response.output_audio_transcript.delta``) →
  ``response.output_audio.done`` → ``response.output_audio_transcript.done`` →
  ``response.content_part.done`` → ``response.output_item.done`` →
  ``conversation.item.done`` → ``response.done`` (with ``usage``) →
  ``rate_limits.updated``. (This is the order in protocols.md D4; one third-party capture
  shows ``conversation.item.done`` before ``response.output_item.done`` — clients must not
  depend on the relative order of those two.)
  Audio is in the session's OUTPUT format: ``audio/pcm`` 24 kHz int16, or ``audio/pcmu`` /
  ``audio/pcma`` 8 kHz, in 40 ms chunks paced at ``pace`` × real time.
* Barge-in: speech start during a response with ``interrupt_response`` → the
  ``speech_started`` event first, then the response ends ``cancelled`` with reason
  ``turn_detected`` (its item ``incomplete``). ``response.cancel`` → reason
  ``client_cancelled``.

What it is not: there is no model. Replies are a tone (default 1.5 s, 440 Hz, peak
-12 dBFS) or the PCM you give it, with a fixed transcript. ``output_audio_buffer.*``
(WebRTC/SIP only) is answered like any unknown event type.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import conformance

__all__ = [
    "CancelRecord",
    "FakeOpenAIRealtime",
    "FakeRealtimeSession",
    "FunctionOutputRecord",
    "Handshake",
    "ResponseRecord",
    "TruncationRecord",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]

PCM_RATE = 24_000
"""GA ``audio/pcm`` is 24 kHz only."""
G711_RATE = 8_000
GA_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
FORMAT_TYPES = ("audio/pcm", "audio/pcmu", "audio/pcma")
DEFAULT_INSTRUCTIONS = (
    "You are a helpful, witty, and friendly AI. Act like a human, but remember that you "
    "aren't a human and that you can't do human things in the real world."
)
"""Stand-in for the server's default instructions (the real default is a longer text)."""
DEFAULT_TRANSCRIPT = "This is a fake reply from the realtime test server."
MIN_COMMIT_MS = 100.0
"""``input_audio_buffer.commit`` needs at least this much buffered audio (as the real API)."""
CLOSE_AUTH = 3000
CLOSE_POLICY = 4000

_ALNUM = string.ascii_letters + string.digits

FailMode = Literal["refuse", "drop_mid_response"]

# --------------------------------------------------------------------------- G.711, independent of the app
#
# The fake decodes and encodes G.711 itself rather than importing the app's codec: a test
# that used the code under test on both ends of the wire would pass with a broken codec.


def _ulaw_table() -> np.ndarray:
    # protocols.md E: u=~b; t=(((u&0xF)<<3)+0x84)<<((u>>4)&7); s=(0x84-t) if u&0x80 else (t-0x84)
    u = (~np.arange(256, dtype=np.int32)) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


_ULAW_DECODE = _ulaw_table()
_ALAW_DECODE = _alaw_table()


def ulaw_decode(data: bytes) -> bytes:
    """G.711 μ-law → little-endian int16 PCM."""
    return _ULAW_DECODE.take(np.frombuffer(data, dtype=np.uint8)).tobytes()


def alaw_decode(data: bytes) -> bytes:
    """G.711 A-law → little-endian int16 PCM."""
    return _ALAW_DECODE.take(np.frombuffer(data, dtype=np.uint8)).tobytes()


def ulaw_encode(pcm: bytes) -> bytes:
    """Little-endian int16 PCM → μ-law, the textbook 16-bit encoder (BIAS 0x84, CLIP 32635)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return ((~(sign | (exponent << 4) | mantissa)) & 0xFF).astype(np.uint8).tobytes()


def alaw_encode(pcm: bytes) -> bytes:
    """Little-endian int16 PCM → A-law (the classic g711.c segment search on 13 bits)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.int32) >> 3
    mask = np.where(x >= 0, 0xD5, 0x55)
    mag = np.where(x >= 0, x, -x - 1)
    seg_end = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    seg = np.searchsorted(seg_end, mag, side="left")
    segc = np.minimum(seg, 7)
    mant = np.where(segc < 2, (mag >> 1) & 0x0F, (mag >> np.maximum(segc, 1)) & 0x0F)
    code = np.where(seg >= 8, 0x7F, (segc << 4) | mant)
    return (code ^ mask).astype(np.uint8).tobytes()


def _downsample_24k_to_8k(pcm: bytes) -> bytes:
    """Windowed-sinc low-pass at 3.4 kHz, then every third sample: enough for a fake's reply."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    taps = 95
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * 3400 / PCM_RATE * n) * np.hamming(taps)
    h /= h.sum()
    y = np.convolve(x, h, mode="same")[::3]
    return np.clip(np.round(y), -32768, 32767).astype("<i2").tobytes()


def _tone(seconds: float, rate: int, freq: float = 440.0, peak_dbfs: float = -12.0) -> bytes:
    """A sine with 10 ms fades (no clicks), int16 at ``rate``."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    y = np.sin(2 * np.pi * freq * t) * (32767 * 10 ** (peak_dbfs / 20))
    fade = min(n // 2, rate // 100)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        y[:fade] *= ramp
        y[n - fade :] *= ramp[::-1]
    return np.round(y).astype("<i2").tobytes()


# --------------------------------------------------------------------------- records


def _new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(21))


@dataclass(frozen=True)
class Handshake:
    """One WebSocket upgrade attempt, as the fake saw it (refused ones included)."""

    path: str
    query: dict[str, str]
    authorization: str | None
    headers: Headers
    status: int
    """101 for an accepted upgrade, else the HTTP status sent."""


@dataclass(frozen=True)
class TruncationRecord:
    """A ``conversation.item.truncate`` the fake accepted (answered ``conversation.item.truncated``)."""

    item_id: str
    content_index: int
    audio_end_ms: int
    item_audio_ms: float
    """How much audio the item held when the truncate arrived."""


@dataclass(frozen=True)
class CancelRecord:
    """A response that ended ``cancelled``: by ``response.cancel`` or by barge-in."""

    response_id: str
    reason: Literal["client_cancelled", "turn_detected"]
    item_id: str | None
    audio_ms_sent: float
    """Audio of the response's item already sent when it was cancelled."""


@dataclass(frozen=True)
class FunctionOutputRecord:
    """A ``function_call_output`` item the client created."""

    call_id: str
    output: str
    item_id: str
    name: str
    """The function the call was for (the fake issued it)."""


@dataclass
class ResponseRecord:
    """One response, from ``response.created`` on; fields fill in as it runs."""

    id: str
    trigger: Literal["client", "turn_detected"]
    kind: Literal["audio", "text", "function_call"]
    instructions: str | None
    output_format: dict[str, Any] | None
    status: str = "in_progress"
    reason: str | None = None
    item_ids: list[str] = field(default_factory=list)
    audio_ms_sent: float = 0.0
    audio_deltas: int = 0
    call_id: str | None = None
    started_at: float = 0.0
    """Loop time (``time.monotonic``) the response was asked for (``response.create`` or the turn detected)."""
    first_audio_at: float | None = None
    """Loop time its first audio delta was sent."""
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _cancel: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass
class _Item:
    """The fake's copy of one conversation item."""

    id: str
    data: dict[str, Any]
    audio_ms: float = 0.0
    """Assistant audio generated for it (what a truncate is checked against)."""


class _ClientError(Exception):
    """A client event the real API would answer with an ``error`` (session stays open)."""

    def __init__(self, code: str | None, message: str, param: str | None = None,
                 err_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.err_type = err_type


class _Dropped(Exception):
    """``fail="drop_mid_response"`` closed the socket."""


# --------------------------------------------------------------------------- session config


def _default_session(session_id: str, model: str) -> dict[str, Any]:
    """The GA ``session.created`` object (key set from a captured session.created)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": PCM_RATE},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                    "silence_duration_ms": 200, "idle_timeout_ms": None,
                    "create_response": True, "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": PCM_RATE}, "voice": "alloy", "speed": 1.0},
        },
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "truncation": "auto",
        "expires_at": int(time.time()) + 3600,
        "include": None,
    }


_BETA_SESSION_KEYS = (
    "modalities", "voice", "input_audio_format", "output_audio_format", "turn_detection",
    "input_audio_transcription", "input_audio_noise_reduction", "temperature",
    "max_response_output_tokens", "speed",
)
"""Beta top-level session fields that GA moved or dropped (protocols.md D5)."""
_GA_SESSION_KEYS = {
    "type", "model", "output_modalities", "instructions", "audio", "tools", "tool_choice",
    "max_output_tokens", "tracing", "prompt", "truncation", "include", "reasoning",
    # read-only fields of the session object; a client echoing them back is tolerated
    "object", "id", "expires_at",
}
_INPUT_KEYS = {"format", "transcription", "noise_reduction", "turn_detection"}
_OUTPUT_KEYS = {"format", "voice", "speed"}


def _supported(values: tuple[str, ...]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 2 else " and ".join(quoted)


def _check_format(fmt: Any, where: str, *, rate_required: bool) -> dict[str, Any]:
    if not isinstance(fmt, dict) or "type" not in fmt:
        raise _ClientError("missing_required_parameter", f"Missing required parameter: '{where}.type'.",
                           f"{where}.type")
    kind = fmt["type"]
    if kind not in FORMAT_TYPES:
        raise _ClientError("invalid_value", f"Invalid value: '{kind}'. Supported values are: "
                           f"{_supported(FORMAT_TYPES)}.", f"{where}.type")
    if kind == "audio/pcm":
        if "rate" not in fmt:
            if rate_required:  # reported for audio.output.format by several GA clients
                raise _ClientError("missing_required_parameter",
                                   f"Missing required parameter: '{where}.rate'.", f"{where}.rate")
            return {"type": kind, "rate": PCM_RATE}
        if fmt["rate"] != PCM_RATE:
            raise _ClientError("invalid_value", f"Invalid value: {fmt['rate']}. Supported values are: "
                               f"{PCM_RATE}.", f"{where}.rate")
        return {"type": kind, "rate": PCM_RATE}
    return {"type": kind}


def _check_turn_detection(td: Any) -> dict[str, Any] | None:
    if td is None:
        return None
    where = "session.audio.input.turn_detection"
    if not isinstance(td, dict) or "type" not in td:
        raise _ClientError("missing_required_parameter", f"Missing required parameter: '{where}.type'.",
                           f"{where}.type")
    if td["type"] == "server_vad":
        keys = ("type", "threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms",
                "create_response", "interrupt_response")
        full = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
                "idle_timeout_ms": None, "create_response": True, "interrupt_response": True}
    elif td["type"] == "semantic_vad":
        keys = ("type", "eagerness", "create_response", "interrupt_response")
        full = {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}
        if td.get("eagerness", "auto") not in ("low", "medium", "high", "auto"):
            raise _ClientError("invalid_value", f"Invalid value: '{td['eagerness']}'. Supported values are: "
                               "'low', 'medium', 'high', and 'auto'.", f"{where}.eagerness")
    else:
        raise _ClientError("invalid_value", f"Invalid value: '{td['type']}'. Supported values are: "
                           "'server_vad' and 'semantic_vad'.", f"{where}.type")
    for key, value in td.items():
        if key not in keys:
            raise _ClientError("unknown_parameter", f"Unknown parameter: '{where}.{key}'.", f"{where}.{key}")
        if value is not None:
            full[key] = value
    return full


def _merge_session_update(current: dict[str, Any], update: Any, *, audio_out: bool) -> dict[str, Any]:
    """Validate a GA ``session.update`` and return the new effective config.

    Raises ``_ClientError`` with the real API's code for the first problem; then nothing
    at all is applied (the real server rejects the whole update).
    """
    if not isinstance(update, dict):
        raise _ClientError("invalid_type", "Invalid type for 'session': expected an object.", "session")
    for key in update:
        if key in _BETA_SESSION_KEYS or key not in _GA_SESSION_KEYS:
            raise _ClientError("unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}")
    if "type" not in update:
        raise _ClientError("missing_required_parameter", "Missing required parameter: 'session.type'.",
                           "session.type")
    if update["type"] != "realtime":
        raise _ClientError("invalid_value", f"Invalid value: '{update['type']}'. This is a 'realtime' session; "
                           "its type cannot be changed.", "session.type")

    new = json.loads(json.dumps(current))  # deep copy, JSON-only values
    for key in ("instructions", "tools", "tool_choice", "max_output_tokens", "tracing", "prompt",
                "truncation", "include", "reasoning"):
        if key in update:
            new[key] = update[key]
    if "output_modalities" in update:
        mods = update["output_modalities"]
        if not isinstance(mods, list) or not mods or any(m not in ("audio", "text") for m in mods):
            raise _ClientError("invalid_value", f"Invalid value: {mods!r}. Supported values are: 'text' and "
                               "'audio'.", "session.output_modalities")
        new["output_modalities"] = list(mods)
    for i, tool in enumerate(new.get("tools") or []):
        if not isinstance(tool, dict) or tool.get("type") not in ("function", "mcp"):
            raise _ClientError("invalid_value", "Invalid tool: 'type' must be 'function' or 'mcp'.",
                               f"session.tools[{i}].type")
        if tool["type"] == "function" and not tool.get("name"):
            raise _ClientError("missing_required_parameter",
                               f"Missing required parameter: 'session.tools[{i}].name'.", f"session.tools[{i}].name")

    audio = update.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            raise _ClientError("invalid_type", "Invalid type for 'session.audio': expected an object.",
                               "session.audio")
        for key in audio:
            if key not in ("input", "output"):
                raise _ClientError("unknown_parameter", f"Unknown parameter: 'session.audio.{key}'.",
                                   f"session.audio.{key}")
        inp = audio.get("input") or {}
        for key in inp:
            if key not in _INPUT_KEYS:
                raise _ClientError("unknown_parameter", f"Unknown parameter: 'session.audio.input.{key}'.",
                                   f"session.audio.input.{key}")
        if "format" in inp:
            new["audio"]["input"]["format"] = _check_format(inp["format"], "session.audio.input.format",
                                                            rate_required=False)
        if "turn_detection" in inp:
            new["audio"]["input"]["turn_detection"] = _check_turn_detection(inp["turn_detection"])
        for key in ("transcription", "noise_reduction"):
            if key in inp:
                new["audio"]["input"][key] = inp[key]
        out = audio.get("output") or {}
        for key in out:
            if key not in _OUTPUT_KEYS:
                raise _ClientError("unknown_parameter", f"Unknown parameter: 'session.audio.output.{key}'.",
                                   f"session.audio.output.{key}")
        if "format" in out:
            new["audio"]["output"]["format"] = _check_format(out["format"], "session.audio.output.format",
                                                             rate_required=True)
        if "voice" in out and out["voice"] is not None:
            voice = out["voice"]
            if voice not in GA_VOICES:
                raise _ClientError("invalid_value", f"Invalid value: '{voice}'. Supported values are: "
                                   f"{_supported(GA_VOICES)}.", "session.audio.output.voice")
            if audio_out and voice != current["audio"]["output"]["voice"]:
                raise _ClientError("cannot_update_voice",
                                   "Cannot update a conversation's voice if assistant audio is present.",
                                   "session.audio.output.voice")
            new["audio"]["output"]["voice"] = voice
        if "speed" in out and out["speed"] is not None:
            if not 0.25 <= float(out["speed"]) <= 1.5:
                raise _ClientError("decimal_above_max_value" if out["speed"] > 1.5 else "decimal_below_min_value",
                                   f"Invalid 'session.audio.output.speed': {out['speed']}.",
                                   "session.audio.output.speed")
            new["audio"]["output"]["speed"] = out["speed"]
    return new


# --------------------------------------------------------------------------- one connection


class FakeRealtimeSession:
    """One accepted WebSocket connection: the protocol state machine plus what it recorded.

    Recorded (read these in tests):

    * ``config`` – the effective session object (what the last ``session.updated`` said).
    * ``session_updates`` – every ``session`` object a client ``session.update`` carried,
      accepted or not, in order.
    * ``events`` – every client event, parsed, in arrival order.
    * ``server_events`` – every event the fake sent, in order.
    * ``audio_in`` – appended audio decoded to int16 PCM at the input rate
      (24 kHz for ``audio/pcm``, 8 kHz for ``audio/pcmu``/``pcma``); ``audio_in_raw`` –
      the bytes exactly as they came off the wire (base64-decoded).
    * ``append_formats`` – for each ``input_audio_buffer.append``, the input format type the
      session had when it read it (what the server took those bytes to be).
    * ``truncations`` (accepted), ``truncate_errors``, ``cancels``, ``function_outputs``,
      ``responses_created``, ``errors`` (every ``error`` event sent),
      ``audio_sent_ms`` (assistant audio sent, per item id), ``close_sent`` (code, reason)
      when the fake closed the socket, ``closed`` (set when the connection is over).
    """

    def __init__(self, server: FakeOpenAIRealtime, ws: ServerConnection, model: str | None,
                 handshake: Handshake) -> None:
        self._server = server
        self._ws = ws
        self.handshake = handshake
        self.id = _new_id("sess_")
        self.model = model
        self.conversation_id = _new_id("conv_")
        self.config: dict[str, Any] = _default_session(self.id, model or "")
        self.config["expires_at"] = int(time.time() + server.session_seconds)
        self.append_formats: list[str] = []
        self.session_updates: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.server_events: list[dict[str, Any]] = []
        self.audio_in = bytearray()
        self.audio_in_raw = bytearray()
        self.truncations: list[TruncationRecord] = []
        self.truncate_errors: list[dict[str, Any]] = []
        self.cancels: list[CancelRecord] = []
        self.function_outputs: list[FunctionOutputRecord] = []
        self.responses_created: list[ResponseRecord] = []
        self.errors: list[dict[str, Any]] = []
        self.audio_sent_ms: dict[str, float] = {}
        self.close_sent: tuple[int, str] | None = None
        self.closed = asyncio.Event()

        self._cond = asyncio.Condition()
        self._send_lock = asyncio.Lock()
        self._items: dict[str, _Item] = {}
        self._order: list[str] = []
        self._active: ResponseRecord | None = None
        self._assistant_audio = False
        self._calls: dict[str, str] = {}  # call_id -> function name, issued by the fake
        self._tool_call_issued = False
        self._dropped = False
        # input buffer and VAD (on the audio clock: ms of audio appended so far)
        self._pcm_rest = b""
        self._clock_ms = 0.0
        self._buffer_ms = 0.0
        self._vad_pending = np.zeros(0, dtype=np.int16)
        self._vad_rate = 0
        self._in_speech = False
        self._voiced_ms = 0
        self._silent_ms = 0
        self._onset_ms = 0.0
        self._speech_item: str | None = None

    # ------------------------------------------------------------------ public views

    @property
    def input_format(self) -> dict[str, Any]:
        """The current ``audio.input.format`` object."""
        return self.config["audio"]["input"]["format"]

    @property
    def output_format(self) -> dict[str, Any]:
        """The current ``audio.output.format`` object."""
        return self.config["audio"]["output"]["format"]

    @property
    def input_rate(self) -> int:
        """Sample rate of ``audio_in`` (24000 for pcm, 8000 for G.711)."""
        return PCM_RATE if self.input_format["type"] == "audio/pcm" else G711_RATE

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        return self.config["audio"]["input"]["turn_detection"]

    def client_events(self, event_type: str) -> list[dict[str, Any]]:
        """The client events of one type, in order."""
        return [e for e in self.events if e.get("type") == event_type]

    def sent(self, event_type: str) -> list[dict[str, Any]]:
        """The server events of one type the fake sent, in order."""
        return [e for e in self.server_events if e.get("type") == event_type]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
        """Wait until ``predicate()`` holds; re-checked whenever the session records anything."""
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(predicate), timeout)
            except TimeoutError:
                sent = [e["type"] for e in self.server_events[-12:]]
                got = [e.get("type") for e in self.events[-12:] if e.get("type") != "input_audio_buffer.append"]
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; last sent {sent}; "
                                     f"last received (appends omitted) {got}") from None

    async def wait_client_event(self, event_type: str, count: int = 1, timeout: float = 5.0) -> dict[str, Any]:
        """The ``count``-th client event of ``event_type`` (1-based), waiting for it."""
        await self.wait_for(lambda: len(self.client_events(event_type)) >= count, timeout,
                            f"client event {event_type} #{count}")
        return self.client_events(event_type)[count - 1]

    async def wait_server_event(self, event_type: str, count: int = 1, timeout: float = 5.0) -> dict[str, Any]:
        """The ``count``-th server event of ``event_type`` (1-based), waiting for it."""
        await self.wait_for(lambda: len(self.sent(event_type)) >= count, timeout,
                            f"server event {event_type} #{count}")
        return self.sent(event_type)[count - 1]

    # ------------------------------------------------------------------ plumbing

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    async def _send(self, event_type: str, **fields: Any) -> dict[str, Any]:
        event = {"type": event_type, "event_id": _new_id("event_"), **fields}
        payload = json.dumps(event)
        async with self._send_lock:
            if self._dropped or self.close_sent is not None:
                raise ConnectionClosed(None, None)
            recorded = json.loads(payload)  # a snapshot: the fake keeps mutating its own item dicts
            conformance.record("openai", "server", payload)
            self.server_events.append(recorded)
            if event_type == "error":
                self.errors.append(recorded)
            await self._ws.send(payload)
        await self._notify()
        return event

    async def _error(self, err: _ClientError, client_event_id: str | None) -> None:
        await self._send("error", error={"type": err.err_type, "code": err.code, "message": err.message,
                                         "param": err.param, "event_id": client_event_id})

    async def _close(self, code: int, reason: str) -> None:
        self.close_sent = (code, reason)
        await self._ws.close(code, reason)
        await self._notify()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the connection until either side closes it."""
        try:
            if not await self._admit():
                return
            if self._server.created_delay:
                await asyncio.sleep(self._server.created_delay)
            await self._send("session.created", session=self.config)
            async for raw in self._ws:
                await self._on_message(raw)
        except (ConnectionClosed, _Dropped):
            pass
        finally:
            active = self._active
            if active is not None and active._task is not None:
                active._task.cancel()
                await asyncio.gather(active._task, return_exceptions=True)
            self.closed.set()
            await self._notify()

    async def _admit(self) -> bool:
        """The checks the real API makes after the upgrade: key, beta header, model."""
        key = self._server.api_key
        auth = self.handshake.authorization
        if key is not None and auth != f"Bearer {key}":
            if not auth:
                err = _ClientError(None, "Missing bearer or basic authentication in header")
            else:
                shown = auth.removeprefix("Bearer ")
                masked = shown[:3] + "*" * max(len(shown) - 7, 3) + shown[-4:] if len(shown) > 7 else "***"
                err = _ClientError("invalid_api_key", f"Incorrect API key provided: {masked}. You can find your "
                                   "API key at https://platform.openai.com/account/api-keys.")
            await self._error(err, None)
            await self._close(CLOSE_AUTH, f"invalid_request_error.{err.code or 'missing_api_key'}")
            return False
        if "openai-beta" in self.handshake.headers:
            await self._error(_ClientError("beta_api_shape_disabled", "The beta API shape is no longer "
                                           "supported. Remove the OpenAI-Beta header and use the GA event shapes."),
                              None)
            await self._close(CLOSE_POLICY, "invalid_request_error.beta_api_shape_disabled")
            return False
        if not self.model:
            await self._error(_ClientError("missing_model", "You must provide a model parameter, for example "
                                           "wss://api.openai.com/v1/realtime?model=gpt-realtime"), None)
            await self._close(CLOSE_POLICY, "invalid_request_error.missing_model")
            return False
        return True

    async def _on_message(self, raw: str | bytes) -> None:
        conformance.record("openai", "client", raw)
        if isinstance(raw, bytes):
            self.events.append({"type": None, "binary": raw})
            await self._notify()
            await self._error(_ClientError("invalid_event", "Expected a text WebSocket message; binary frames "
                                           "are not supported."), None)
            return
        try:
            event = json.loads(raw)
            if not isinstance(event, dict):
                raise ValueError
        except ValueError:
            self.events.append({"type": None, "raw": raw})
            await self._notify()
            await self._error(_ClientError("invalid_json", "Invalid event: failed to parse JSON value."), None)
            return
        self.events.append(event)
        await self._notify()
        handler = self._handlers().get(event.get("type"))
        try:
            if handler is None:
                raise _ClientError("invalid_value", f"Invalid value: '{event.get('type')}'. Supported values are: "
                                   f"{_supported(tuple(self._handlers()))}.", "type")
            await handler(event)
        except _ClientError as err:
            await self._error(err, event.get("event_id"))

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.truncate": self._on_truncate,
            "conversation.item.delete": self._on_item_delete,
            "conversation.item.retrieve": self._on_item_retrieve,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
        }

    # ------------------------------------------------------------------ session

    async def _on_session_update(self, event: dict[str, Any]) -> None:
        update = event.get("session")
        self.session_updates.append(update if isinstance(update, dict) else {"<invalid>": update})
        await self._notify()
        if update is None:
            raise _ClientError("missing_required_parameter", "Missing required parameter: 'session'.", "session")
        self.config = _merge_session_update(self.config, update, audio_out=self._assistant_audio)
        await self._send("session.updated", session=self.config)

    # ------------------------------------------------------------------ input audio and VAD

    def _decode_input(self, wire: bytes) -> bytes:
        kind = self.input_format["type"]
        if kind == "audio/pcmu":
            return ulaw_decode(wire)
        if kind == "audio/pcma":
            return alaw_decode(wire)
        data = self._pcm_rest + wire
        cut = len(data) & ~1
        self._pcm_rest = data[cut:]
        return data[:cut]

    async def _on_append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise _ClientError("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        try:
            wire = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _ClientError("invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.",
                               "audio") from None
        self.audio_in_raw += wire
        self.append_formats.append(self.input_format["type"])
        pcm = self._decode_input(wire)
        self.audio_in += pcm
        rate = self.input_rate
        self._buffer_ms += len(pcm) / 2 / rate * 1000
        await self._notify()
        if self.turn_detection is None:
            self._clock_ms += len(pcm) / 2 / rate * 1000
            return
        await self._vad_feed(np.frombuffer(pcm, dtype="<i2"), rate)

    def _vad_params(self) -> tuple[float, int, int, int]:
        """(threshold dBFS, silence ms, prefix padding ms, min speech ms) for the current config."""
        td = self.turn_detection or {}
        opts = self._server
        if td.get("type") == "semantic_vad":
            silence = {"high": 300, "medium": 500, "auto": 500, "low": 1000}[td.get("eagerness") or "auto"]
            threshold, prefix = 0.5, 300
        else:
            silence = int(td.get("silence_duration_ms") or 500)
            threshold, prefix = float(td.get("threshold", 0.5)), int(td.get("prefix_padding_ms") or 0)
        dbfs = opts.vad_threshold_dbfs if opts.vad_threshold_dbfs is not None else -60.0 + 40.0 * threshold
        return dbfs, silence, prefix, opts.min_speech_ms

    async def _vad_feed(self, samples: np.ndarray, rate: int) -> None:
        """Energy VAD in 10 ms frames; emits the server-VAD events as the audio clock passes them."""
        if rate != self._vad_rate:
            self._vad_pending = np.zeros(0, dtype=np.int16)
            self._vad_rate = rate
        pending = np.concatenate([self._vad_pending, samples])
        frame = rate // 100
        n = len(pending) // frame
        self._vad_pending = pending[n * frame :]
        threshold, silence_ms, prefix_ms, min_speech_ms = self._vad_params()
        frames = pending[: n * frame].astype(np.float64).reshape(n, frame) if n else np.zeros((0, frame))
        power = (frames**2).mean(axis=1) / 32768.0**2 if n else np.zeros(0)
        dbfs = 10 * np.log10(power + 1e-12)
        for level in dbfs:
            voiced = level > threshold
            if not self._in_speech:
                if voiced:
                    if self._voiced_ms == 0:
                        self._onset_ms = self._clock_ms
                    self._voiced_ms += 10
                    if self._voiced_ms >= min_speech_ms:
                        await self._speech_started(max(0.0, self._onset_ms - prefix_ms))
                else:
                    self._voiced_ms = 0
            else:
                self._silent_ms = 0 if voiced else self._silent_ms + 10
                if self._silent_ms >= silence_ms:
                    self._clock_ms += 10
                    await self._speech_stopped(self._clock_ms)
                    continue
            self._clock_ms += 10

    async def _speech_started(self, audio_start_ms: float) -> None:
        self._in_speech = True
        self._silent_ms = 0
        self._speech_item = _new_id("item_")
        await self._send("input_audio_buffer.speech_started", audio_start_ms=int(audio_start_ms),
                         item_id=self._speech_item)
        td = self.turn_detection or {}
        if self._active is not None and td.get("interrupt_response", True):
            await self._cancel_active("turn_detected")

    async def _speech_stopped(self, audio_end_ms: float) -> None:
        item_id = self._speech_item or _new_id("item_")
        self._in_speech = False
        self._voiced_ms = 0
        self._silent_ms = 0
        self._speech_item = None
        await self._send("input_audio_buffer.speech_stopped", audio_end_ms=int(audio_end_ms), item_id=item_id)
        await self._commit_user_audio(item_id)
        td = self.turn_detection or {}
        if td.get("create_response", True):
            if self._active is None:
                await self._start_response(trigger="turn_detected", params={})
            # else: the real server may skip it ("may fail to create a response if the model is
            # already responding"); the fake skips it.

    async def _commit_user_audio(self, item_id: str) -> None:
        previous = self._order[-1] if self._order else None
        self._buffer_ms = 0.0
        await self._send("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
                "content": [{"type": "input_audio", "transcript": None}]}
        self._add_item(item)
        await self._send("conversation.item.added", previous_item_id=previous, item=item)
        await self._send("conversation.item.done", previous_item_id=previous, item=item)
        transcription = self.config["audio"]["input"].get("transcription")
        if transcription:
            text = self._server.input_transcript
            await self._send("conversation.item.input_audio_transcription.completed", item_id=item_id,
                             content_index=0, transcript=text,
                             usage={"type": "tokens", "total_tokens": 24, "input_tokens": 16,
                                    "input_token_details": {"text_tokens": 0, "audio_tokens": 16},
                                    "output_tokens": 8})

    async def _on_commit(self, event: dict[str, Any]) -> None:
        if self._buffer_ms < MIN_COMMIT_MS:
            raise _ClientError("input_audio_buffer_commit_empty", "Error committing input audio buffer: buffer "
                               f"too small. Expected at least {MIN_COMMIT_MS:.0f}ms of audio, but buffer only has "
                               f"{self._buffer_ms:.2f}ms of audio.")
        item_id = self._speech_item or _new_id("item_")
        self._in_speech = False
        self._speech_item = None
        self._voiced_ms = self._silent_ms = 0
        await self._commit_user_audio(item_id)

    async def _on_clear(self, event: dict[str, Any]) -> None:
        self._buffer_ms = 0.0
        self._in_speech = False
        self._speech_item = None
        self._voiced_ms = self._silent_ms = 0
        await self._send("input_audio_buffer.cleared")

    # ------------------------------------------------------------------ conversation items

    def _add_item(self, item: dict[str, Any]) -> _Item:
        stored = _Item(item["id"], item)
        self._items[item["id"]] = stored
        self._order.append(item["id"])
        return stored

    async def _on_item_create(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            raise _ClientError("missing_required_parameter", "Missing required parameter: 'item'.", "item")
        kind = item.get("type")
        if kind not in ("message", "function_call", "function_call_output"):
            raise _ClientError("invalid_value", f"Invalid value: '{kind}'. Supported values are: 'message', "
                               "'function_call', and 'function_call_output'.", "item.type")
        item = {"object": "realtime.item", **item, "status": "completed"}
        item.setdefault("id", _new_id("item_"))
        if item["id"] in self._items:
            raise _ClientError("item_already_exists", f"Item with id '{item['id']}' already exists.", "item.id")
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system"):
                raise _ClientError("invalid_value", f"Invalid value: '{item.get('role')}'. Supported values are: "
                                   "'user', 'assistant', and 'system'.", "item.role")
            if not isinstance(item.get("content"), list):
                raise _ClientError("missing_required_parameter", "Missing required parameter: 'item.content'.",
                                   "item.content")
        if kind == "function_call_output":
            call_id = item.get("call_id")
            if not call_id:
                raise _ClientError("missing_required_parameter", "Missing required parameter: 'item.call_id'.",
                                   "item.call_id")
            if call_id not in self._calls:
                # the fake's own wording: the API does not know call ids it never issued
                raise _ClientError("invalid_value", f"No function call with call_id '{call_id}' found in the "
                                   "conversation.", "item.call_id")
            self.function_outputs.append(FunctionOutputRecord(call_id, str(item.get("output", "")), item["id"],
                                                              self._calls[call_id]))
        previous = self._order[-1] if self._order else None
        self._add_item(item)
        await self._send("conversation.item.added", previous_item_id=previous, item=item)
        await self._send("conversation.item.done", previous_item_id=previous, item=item)

    async def _on_item_delete(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if item_id not in self._items:
            raise _ClientError("item_delete_invalid_item_id", f"Error deleting item: the item with id '{item_id}' "
                               "does not exist.", "item_id")
        del self._items[item_id]
        self._order.remove(item_id)
        await self._send("conversation.item.deleted", item_id=item_id)

    async def _on_item_retrieve(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if item_id not in self._items:
            raise _ClientError("item_retrieve_invalid_item_id", f"Error retrieving item: the item with id "
                               f"'{item_id}' does not exist.", "item_id")
        await self._send("conversation.item.retrieved", item=self._items[item_id].data)

    def _truncate_problem(self, stored: _Item | None, item_id: Any, content_index: Any,
                          end_ms: Any) -> _ClientError | None:
        if stored is None:
            return _ClientError("item_truncate_invalid_item_id", f"Error truncating item: the item with id "
                                f"'{item_id}' does not exist.", "item_id")
        content = stored.data.get("content") or []
        if stored.data.get("role") != "assistant" or not any(c.get("type") == "output_audio" for c in content):
            return _ClientError("invalid_value", "Only model output audio messages can be truncated", "item_id")
        if content_index != 0:
            return _ClientError("invalid_value", f"Invalid 'content_index': {content_index}. The item has one "
                                "audio content part (index 0).", "content_index")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool) or end_ms < 0:
            return _ClientError("invalid_value", f"Invalid 'audio_end_ms': {end_ms!r}.", "audio_end_ms")
        if end_ms > stored.audio_ms:
            return _ClientError("invalid_value", f"Audio content of {int(stored.audio_ms)}ms is already shorter "
                                f"than {end_ms}ms", "audio_end_ms")
        return None

    async def _on_truncate(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        content_index = event.get("content_index", 0)
        end_ms = event.get("audio_end_ms")
        stored = self._items.get(item_id) if isinstance(item_id, str) else None
        err = self._truncate_problem(stored, item_id, content_index, end_ms)
        if err is not None:
            self.truncate_errors.append({"item_id": item_id, "content_index": content_index,
                                         "audio_end_ms": end_ms, "code": err.code, "message": err.message,
                                         "item_audio_ms": stored.audio_ms if stored else None})
            overlong = stored is not None and isinstance(end_ms, int) and end_ms > stored.audio_ms
            if not (overlong and self._server.clamp_overlong_truncate):
                raise err
            # one client's trace reports this: refuse, then truncate to the real end anyway
            await self._error(err, event.get("event_id"))
            assert stored is not None
            end_ms = int(stored.audio_ms)
        assert stored is not None
        data = stored.data
        record = TruncationRecord(item_id, content_index, end_ms, stored.audio_ms)
        self.truncations.append(record)
        # the unheard part of the transcript goes too
        for part in data["content"]:
            if part.get("type") == "output_audio" and part.get("transcript") and stored.audio_ms > 0:
                words = part["transcript"].split()
                keep = round(len(words) * end_ms / stored.audio_ms)
                part["transcript"] = " ".join(words[:keep])
        stored.audio_ms = float(end_ms)
        await self._send("conversation.item.truncated", item_id=item_id, content_index=content_index,
                         audio_end_ms=end_ms)

    # ------------------------------------------------------------------ responses

    async def _on_response_create(self, event: dict[str, Any]) -> None:
        params = event.get("response") or {}
        if not isinstance(params, dict):
            raise _ClientError("invalid_type", "Invalid type for 'response': expected an object.", "response")
        for key in ("modalities", "voice", "output_audio_format", "temperature", "max_response_output_tokens"):
            if key in params:
                raise _ClientError("unknown_parameter", f"Unknown parameter: 'response.{key}'.", f"response.{key}")
        if self._active is not None:
            raise _ClientError("conversation_already_has_active_response", "Conversation already has an active "
                               f"response in progress: {self._active.id}. Wait until the response is finished "
                               "before creating a new one.")
        await self._start_response(trigger="client", params=params)

    async def _on_response_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        if self._active is None or (wanted and wanted != self._active.id):
            raise _ClientError("response_cancel_not_active", "Cancellation failed: no active response found")
        await self._cancel_active("client_cancelled")

    def _declared_tools(self, params: dict[str, Any]) -> set[str]:
        tools = params.get("tools", self.config.get("tools")) or []
        return {t.get("name") for t in tools if isinstance(t, dict) and t.get("type") == "function"}

    async def _start_response(self, *, trigger: Literal["client", "turn_detected"], params: dict[str, Any]) -> None:
        opts = self._server
        modalities = params.get("output_modalities") or self.config.get("output_modalities") or ["audio"]
        kind: Literal["audio", "text", "function_call"] = "audio" if "audio" in modalities else "text"
        index = len(self.responses_created)
        tool = opts.tool_call
        if (tool is not None and not self._tool_call_issued and index >= opts.tool_call_response
                and tool["name"] in self._declared_tools(params)
                and (opts.tool_call_sessions is None or opts.sessions.index(self) < opts.tool_call_sessions)):
            kind = "function_call"
        record = ResponseRecord(
            id=_new_id("resp_"), trigger=trigger, kind=kind, instructions=params.get("instructions"),
            output_format=dict(self.output_format) if kind == "audio" else None,
            started_at=asyncio.get_running_loop().time())
        self.responses_created.append(record)
        self._active = record
        record._task = asyncio.create_task(self._run_response(record, modalities))

    async def _cancel_active(self, reason: Literal["client_cancelled", "turn_detected"]) -> None:
        record = self._active
        if record is None or record._task is None:
            return
        record.reason = reason
        record._cancel.set()
        await asyncio.gather(record._task, return_exceptions=True)
        if record.status == "cancelled":  # a function call is emitted in one go and completes
            item_id = record.item_ids[0] if record.item_ids else None
            self.cancels.append(CancelRecord(record.id, reason, item_id, record.audio_ms_sent))
        await self._notify()

    def _response_object(self, record: ResponseRecord, status: str, output: list[dict[str, Any]],
                         usage: dict[str, Any] | None) -> dict[str, Any]:
        details = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": record.reason}
        elif status == "incomplete":
            details = {"type": "incomplete", "reason": record.reason}
        audio_cfg = {"output": {"format": self.output_format, "voice": self.config["audio"]["output"]["voice"]}}
        return {
            "object": "realtime.response", "id": record.id, "status": status, "status_details": details,
            "output": output, "conversation_id": self.conversation_id,
            "output_modalities": ["text"] if record.kind == "text" else ["audio"],
            "max_output_tokens": self.config.get("max_output_tokens", "inf"), "audio": audio_cfg,
            "usage": usage, "metadata": None,
        }

    def _usage(self, record: ResponseRecord, text: str) -> dict[str, Any]:
        text_in = len((self.config.get("instructions") or "").split()) + 8
        audio_in = int(len(self.audio_in) / 2 / self.input_rate * 10)  # ~10 tokens per second of speech
        text_out = max(1, len(text.split()))
        audio_out = int(record.audio_ms_sent / 50)
        inp, out = text_in + audio_in, text_out + audio_out
        return {
            "total_tokens": inp + out, "input_tokens": inp, "output_tokens": out,
            "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in, "image_tokens": 0,
                                    "cached_tokens": 0,
                                    "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}},
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }

    async def _paced(self, record: ResponseRecord, due: float) -> bool:
        """Sleep until loop time ``due`` unless cancelled; False once the response is cancelled."""
        delay = due - asyncio.get_running_loop().time()
        if record._cancel.is_set():
            return False
        if delay <= 0:
            await asyncio.sleep(0)
            return not record._cancel.is_set()
        try:
            await asyncio.wait_for(record._cancel.wait(), delay)
        except TimeoutError:
            return True
        return False

    async def _run_response(self, record: ResponseRecord, modalities: list[str]) -> None:
        try:
            await self._send("response.created", response=self._response_object(record, "in_progress", [], None))
            if record.kind == "function_call":
                await self._emit_function_call(record)
            else:
                await self._emit_message(record)
        except (ConnectionClosed, _Dropped):
            pass
        finally:
            if self._active is record:
                self._active = None
            record.done.set()
            await self._notify()

    async def _emit_item_start(self, record: ResponseRecord, item: dict[str, Any]) -> str | None:
        previous = self._order[-1] if self._order else None
        self._add_item(item)
        record.item_ids.append(item["id"])
        await self._send("response.output_item.added", response_id=record.id, output_index=0, item=item)
        await self._send("conversation.item.added", previous_item_id=previous, item=item)
        return previous

    async def _emit_message(self, record: ResponseRecord) -> None:
        opts = self._server
        audio_mode = record.kind == "audio"
        item_id = _new_id("item_")
        item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        previous = await self._emit_item_start(record, item)
        stored = self._items[item_id]
        part_type = "audio" if audio_mode else "text"
        ids = {"response_id": record.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self._send("response.content_part.added", **ids,
                         part={"type": part_type, "transcript": ""} if audio_mode else {"type": "text", "text": ""})
        words = opts.reply_transcript.split()
        said: list[str] = []
        loop = asyncio.get_running_loop()
        start = max(loop.time(), record.started_at + opts.first_audio_delay)
        interval = (opts.chunk_ms / 1000 / opts.pace) if opts.pace > 0 else 0.0
        cancelled = False
        if audio_mode:
            fmt = self.output_format
            audio = opts.reply_audio(fmt)
            bytes_per_ms = (PCM_RATE * 2 if fmt["type"] == "audio/pcm" else G711_RATE) / 1000
            chunk = int(bytes_per_ms * opts.chunk_ms)
            chunks = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
            drop_at = len(chunks) // 2 if opts.fail == "drop_mid_response" else None
            for i, piece in enumerate(chunks):
                if not await self._paced(record, start + i * interval):
                    cancelled = True
                    break
                if drop_at is not None and i == drop_at:
                    self._dropped = True
                    self.close_sent = (1011, "Internal server error")
                    await self._ws.close(1011, "Internal server error")
                    raise _Dropped
                # transcript runs a little ahead of the audio, as the real one does
                due_words = min(len(words), math.ceil((i + 1) * len(words) / max(1, len(chunks) - 1)))
                while len(said) < due_words:
                    delta = ("" if not said else " ") + words[len(said)]
                    said.append(words[len(said)])
                    await self._send("response.output_audio_transcript.delta", **ids, delta=delta)
                ms = len(piece) / bytes_per_ms
                stored.audio_ms += ms
                record.audio_ms_sent += ms
                record.audio_deltas += 1
                self.audio_sent_ms[item_id] = self.audio_sent_ms.get(item_id, 0.0) + ms
                self._assistant_audio = True
                await self._send("response.output_audio.delta", **ids,
                                 delta=base64.b64encode(piece).decode("ascii"))
                if record.first_audio_at is None:
                    record.first_audio_at = loop.time()
            transcript = " ".join(said)
            await self._send("response.output_audio.done", **ids)
            await self._send("response.output_audio_transcript.done", **ids, transcript=transcript)
            part = {"type": "audio", "transcript": transcript}
            content = {"type": "output_audio", "transcript": transcript}
        else:
            for i, word in enumerate(words):
                if not await self._paced(record, start + i * interval):
                    cancelled = True
                    break
                said.append(word)
                await self._send("response.output_text.delta", **ids, delta=("" if i == 0 else " ") + word)
            transcript = " ".join(said)
            await self._send("response.output_text.done", **ids, text=transcript)
            part = {"type": "text", "text": transcript}
            content = {"type": "output_text", "text": transcript}
        await self._send("response.content_part.done", **ids, part=part)
        item.update(status="incomplete" if cancelled else "completed", content=[content])
        await self._send("response.output_item.done", response_id=record.id, output_index=0, item=item)
        await self._send("conversation.item.done", previous_item_id=previous, item=item)
        await self._finish(record, "cancelled" if cancelled else "completed", [item], transcript)

    async def _emit_function_call(self, record: ResponseRecord) -> None:
        tool = self._server.tool_call
        assert tool is not None
        self._tool_call_issued = True
        call_id = _new_id("call_")[:21]
        record.call_id = call_id
        self._calls[call_id] = tool["name"]
        arguments = json.dumps(tool.get("arguments", {}))
        item_id = _new_id("item_")
        item = {"id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "name": tool["name"], "call_id": call_id, "arguments": ""}
        previous = await self._emit_item_start(record, item)
        ids = {"response_id": record.id, "item_id": item_id, "output_index": 0, "call_id": call_id}
        third = max(1, len(arguments) // 3)
        for i in range(0, len(arguments), third):
            await self._send("response.function_call_arguments.delta", **ids, delta=arguments[i : i + third])
        await self._send("response.function_call_arguments.done", **ids, name=tool["name"], arguments=arguments)
        item.update(status="completed", arguments=arguments)
        await self._send("response.output_item.done", response_id=record.id, output_index=0, item=item)
        await self._send("conversation.item.done", previous_item_id=previous, item=item)
        await self._finish(record, "completed", [item], arguments)

    async def _finish(self, record: ResponseRecord, status: str, output: list[dict[str, Any]], text: str) -> None:
        record.status = status
        if self._active is record:
            # over as of response.done: a response.create sent on seeing it must be accepted
            self._active = None
        await self._send("response.done", response=self._response_object(record, status, output,
                                                                          self._usage(record, text)))
        if self._server.send_rate_limits:
            await self._send("rate_limits.updated", rate_limits=[
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {"name": "tokens", "limit": 15_000_000, "remaining": 14_999_000, "reset_seconds": 0.004},
            ])


# --------------------------------------------------------------------------- the server


class FakeOpenAIRealtime:
    """The fake server. Use as ``async with FakeOpenAIRealtime(...) as fake:``.

    Options (keyword-only):

    * ``api_key`` – the key ``Authorization: Bearer`` must carry; ``None`` accepts any.
      A wrong/missing key gets the real API's answer: upgrade, ``error``
      (``invalid_api_key``), close 3000.
    * ``fail`` – ``"refuse"``: HTTP 401 on every handshake (a gateway/proxy refusing);
      ``"drop_mid_response"``: close 1011 half-way through the first audio response.
    * ``pace`` – reply audio speed as a multiple of real time (default 2.0; ``0`` = burst).
    * ``chunk_ms`` – audio per ``response.output_audio.delta`` (default 40).
    * ``reply_seconds`` / ``reply_pcm`` – the default reply is a 440 Hz tone of
      ``reply_seconds``; ``reply_pcm`` (int16 mono, 24 kHz) replaces it, down-sampled to
      8 kHz when the output format is G.711.
    * ``reply_transcript`` – the transcript (or text) of every reply.
    * ``tool_call`` – ``{"name": …, "arguments": {…}}``: the first response numbered
      ``tool_call_response`` or later (0-based, default 0) for which the session (or the
      ``response.create``) declares a function tool of that name becomes a function call
      instead of speech. Issued once; the next ``response.create`` (normally after the
      client's ``function_call_output``) speaks. An undeclared tool is never called.
      ``tool_call_sessions``: only the first N connections make it (a call that comes back to the model
      on a new session, e.g. from a transfer, is then only talked to).
    * ``vad_threshold_dbfs`` – energy VAD threshold; default maps ``turn_detection.threshold``
      t to ``-60 + 40·t`` dBFS (0.5 → -40 dBFS). ``min_speech_ms`` – voiced time needed
      before ``speech_started`` (default 30).
    * ``input_transcript`` – text of ``conversation.item.input_audio_transcription.completed``
      (sent only when the session configures ``audio.input.transcription``).
    * ``clamp_overlong_truncate`` – answer a past-the-end truncate with the error AND then
      truncate to the real end (one client trace reports this); default: error only.
    * ``send_rate_limits`` – send ``rate_limits.updated`` after each ``response.done``.
    * ``created_delay`` – seconds between the upgrade and ``session.created`` (the real server
      takes a moment; whatever the client appends meanwhile is read in the format the session
      has when the fake gets to it: the default ``audio/pcm`` 24 kHz until a ``session.update``).
    * ``first_audio_delay`` – seconds from asking for a response to its first audio (a slow model's
      time to first byte, cancellable like the rest of the response); ``ResponseRecord.started_at``/
      ``first_audio_at`` say what it took.
    * ``session_seconds`` – the session's length: ``session.created`` carries
      ``expires_at`` = now + this (GA sessions: 60 minutes today).
    """

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        fail: FailMode | None = None,
        pace: float = 2.0,
        chunk_ms: int = 40,
        reply_seconds: float = 1.5,
        reply_pcm: bytes | None = None,
        reply_transcript: str = DEFAULT_TRANSCRIPT,
        tool_call: dict[str, Any] | None = None,
        tool_call_response: int = 0,
        tool_call_sessions: int | None = None,
        vad_threshold_dbfs: float | None = None,
        min_speech_ms: int = 30,
        input_transcript: str = "(fake transcript)",
        clamp_overlong_truncate: bool = False,
        send_rate_limits: bool = True,
        created_delay: float = 0.0,
        session_seconds: float = 3600.0,
        first_audio_delay: float = 0.0,
    ) -> None:
        if fail not in (None, "refuse", "drop_mid_response"):
            raise ValueError(f"unknown fail mode {fail!r}")
        if tool_call is not None and "name" not in tool_call:
            raise ValueError("tool_call needs a 'name'")
        self.api_key = api_key
        self.fail = fail
        self.pace = pace
        self.chunk_ms = chunk_ms
        self.reply_seconds = reply_seconds
        self.reply_pcm = reply_pcm
        self.reply_transcript = reply_transcript
        self.tool_call = tool_call
        self.tool_call_response = tool_call_response
        self.tool_call_sessions = tool_call_sessions
        self.vad_threshold_dbfs = vad_threshold_dbfs
        self.min_speech_ms = min_speech_ms
        self.input_transcript = input_transcript
        self.clamp_overlong_truncate = clamp_overlong_truncate
        self.send_rate_limits = send_rate_limits
        self.created_delay = created_delay
        self.first_audio_delay = first_audio_delay
        self.session_seconds = session_seconds
        self.sessions: list[FakeRealtimeSession] = []
        self.handshakes: list[Handshake] = []
        self._server: Server | None = None
        self._port = 0
        self._cond = asyncio.Condition()
        self._audio_cache: dict[str, bytes] = {}

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        """``ws://127.0.0.1:PORT/v1`` – give this to ``AsyncOpenAI(websocket_base_url=…)``."""
        return f"ws://127.0.0.1:{self._port}/v1"

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/v1/realtime`` – pipecat's ``base_url`` (it appends ``?model=``)."""
        return f"{self.base_url}/realtime"

    @property
    def session(self) -> FakeRealtimeSession:
        """The most recent connection's session."""
        if not self.sessions:
            raise AssertionError("no client has connected to the fake OpenAI Realtime server")
        return self.sessions[-1]

    async def wait_for_session(self, index: int = 0, timeout: float = 5.0) -> FakeRealtimeSession:
        """The ``index``-th accepted connection (0-based), waiting for it to arrive."""
        async with self._cond:
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: len(self.sessions) > index), timeout)
            except TimeoutError:
                raise AssertionError(f"no session #{index} within {timeout}s; handshakes: "
                                     f"{[(h.path, h.status) for h in self.handshakes]}") from None
        return self.sessions[index]

    def reply_audio(self, fmt: dict[str, Any]) -> bytes:
        """The reply, encoded in ``fmt`` (cached per format)."""
        kind = fmt["type"]
        if kind not in self._audio_cache:
            if kind == "audio/pcm":
                audio = self.reply_pcm if self.reply_pcm is not None else _tone(self.reply_seconds, PCM_RATE)
            else:
                pcm8 = (_downsample_24k_to_8k(self.reply_pcm) if self.reply_pcm is not None
                        else _tone(self.reply_seconds, G711_RATE))
                audio = ulaw_encode(pcm8) if kind == "audio/pcmu" else alaw_encode(pcm8)
            self._audio_cache[kind] = audio
        return self._audio_cache[kind]

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeOpenAIRealtime:
        self._server = await serve(self._handler, "127.0.0.1", 0, process_request=self._process_request,
                                   max_size=2**24, compression=None, close_timeout=2)
        self._port = self._server.sockets[0].getsockname()[1] if self._server.sockets else 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        auth = request.headers.get("Authorization")

        def record(status: int) -> None:
            self.handshakes.append(Handshake(parts.path, query, auth, request.headers, status))

        if parts.path.rstrip("/") != "/v1/realtime":
            record(404)
            return self._json_response(HTTPStatus.NOT_FOUND, {"error": {
                "message": f"Invalid URL (GET {parts.path})", "type": "invalid_request_error",
                "param": None, "code": None}})
        if self.fail == "refuse":
            record(401)
            return self._json_response(HTTPStatus.UNAUTHORIZED, {"error": {
                "message": "Incorrect API key provided.", "type": "invalid_request_error", "param": None,
                "code": "invalid_api_key"}})
        record(101)
        return None

    @staticmethod
    def _json_response(status: HTTPStatus, body: dict[str, Any]) -> Response:
        data = json.dumps(body).encode()
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                           ("Connection", "close")])
        return Response(status.value, status.phrase, headers, data)

    async def _handler(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        parts = urlsplit(request.path)
        model = parse_qs(parts.query).get("model", [None])[-1]
        handshake = next((h for h in reversed(self.handshakes) if h.headers is request.headers),
                         self.handshakes[-1])
        session = FakeRealtimeSession(self, ws, model, handshake)
        self.sessions.append(session)
        async with self._cond:
            self._cond.notify_all()
        await session.run()
