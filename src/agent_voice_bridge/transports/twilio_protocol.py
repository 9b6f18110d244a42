"""Twilio Media Streams messages (bidirectional ``<Connect><Stream>``), parsed and built.

Inbound ``media`` arrives 50 times a second per call, so it is parsed with plain dict
access and one base64 decode; the rarer events get small dataclasses. Anything
malformed raises :class:`ProtocolError`, which the input logs and skips.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field


class ProtocolError(ValueError):
    """A message that is not a Twilio media-stream event we understand."""


@dataclass(frozen=True)
class Connected:
    protocol: str = "Call"


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str = ""
    tracks: tuple[str, ...] = ("inbound",)
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000


@dataclass(frozen=True)
class Media:
    payload: bytes
    track: str = "inbound"


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Stop:
    pass


Event = Connected | Start | Media | Mark | Dtmf | Stop


def parse_event(text: str | bytes) -> Event:
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc.__class__.__name__}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("not a JSON object")
    kind = msg.get("event")
    try:
        if kind == "media":
            media = msg["media"]
            return Media(base64.b64decode(media["payload"], validate=True), media.get("track", "inbound"))
        if kind == "mark":
            return Mark(str(msg["mark"]["name"]))
        if kind == "start":
            return _parse_start(msg)
        if kind == "dtmf":
            return Dtmf(str(msg["dtmf"]["digit"]))
        if kind == "stop":
            return Stop()
        if kind == "connected":
            return Connected(str(msg.get("protocol", "Call")))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, binascii.Error) as exc:
        raise ProtocolError(f"malformed {kind!r} event: {exc.__class__.__name__} {exc}") from None
    raise ProtocolError(f"unknown event {kind!r}")


def _parse_start(msg: dict) -> Start:
    start = msg["start"]
    fmt = start.get("mediaFormat", {})
    params = start.get("customParameters", {})
    tracks = start.get("tracks", ["inbound"])
    if not isinstance(params, dict) or not isinstance(fmt, dict) or not isinstance(tracks, list):
        raise TypeError("customParameters and mediaFormat must be objects, tracks a list")
    return Start(
        stream_sid=str(start.get("streamSid") or msg["streamSid"]),
        call_sid=str(start.get("callSid", "")),
        account_sid=str(start.get("accountSid", "")),
        tracks=tuple(str(t) for t in tracks),
        custom_parameters={str(k): str(v) for k, v in params.items()},
        encoding=str(fmt.get("encoding", "audio/x-mulaw")),
        sample_rate=int(fmt.get("sampleRate", 8000)),
    )


class OutboundMessages:
    """Builds server → Twilio messages for one stream; the streamSid is JSON-escaped once."""

    def __init__(self, stream_sid: str):
        self._sid = json.dumps(stream_sid)
        self.marks_sent = 0
        """Twilio echoes each mark once: the stream allows no (or hardly any) more echoes than this."""

    def media(self, mulaw: bytes) -> str:
        payload = base64.b64encode(mulaw).decode("ascii")
        return f'{{"event":"media","streamSid":{self._sid},"media":{{"payload":"{payload}"}}}}'

    def mark(self, name: str) -> str:
        self.marks_sent += 1
        return f'{{"event":"mark","streamSid":{self._sid},"mark":{{"name":{json.dumps(name)}}}}}'

    def clear(self) -> str:
        return f'{{"event":"clear","streamSid":{self._sid}}}'
