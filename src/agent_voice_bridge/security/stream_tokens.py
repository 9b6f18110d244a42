"""One-time tokens that bind a media stream to the signed webhook that announced it.

``/incoming`` (signed by Twilio) puts a token into the TwiML's ``<Parameter>``;
Twilio hands it back in the stream's ``start``. The token is an HMAC over the call
SID, the caller (``From``), the called number (``To``), the line the call was given and an expiry, keyed with the
auth token, so any worker or host can check it without shared state; "one-time"
uses the limits store, which is shared anyway. The caller and callee are bound
because they arrive as plain ``customParameters`` beside the token, and the AI's
instructions and per-caller memory use them: a stream that kept a valid token but
claimed another caller would get that caller's memory; the line, so that a stream
cannot run another line's chain (the line is chosen once, at ``/incoming``).
Anyone who opens ``/media-stream`` without having gone through a signed
``/incoming`` gets no pipeline and spends no AI budget.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

PARAMETER = "streamToken"
MAX_TOKEN_CHARS = 64
"""Ours are ~43 (10 digits, a dot, 32 base64url): anything much longer is not one."""
MAX_EXPIRY_DIGITS = 12


class StreamTokens:
    def __init__(self, secret: str, ttl_seconds: float, clock: Callable[[], float] = time.time):
        self._key = hashlib.sha256(b"voice-bridge stream token\0" + secret.encode()).digest()
        self._ttl = ttl_seconds
        self._clock = clock

    def _mac(self, call_sid: str, caller: str, callee: str, line: str, expires: int) -> str:
        # JSON (ASCII-escaped) keeps the fields apart whatever they hold: no separator can be smuggled in.
        message = json.dumps([call_sid, caller, callee, line, expires]).encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")

    def issue(self, call_sid: str, caller: str = "", callee: str = "", line: str = "") -> str:
        """A token for this call as ``/incoming`` saw it: its SID, ``From``, ``To`` and line ("" when absent)."""
        expires = int(self._clock() + self._ttl)
        return f"{expires}.{self._mac(call_sid, caller, callee, line, expires)}"

    def check(self, call_sid: str, token: str | None, caller: str = "", callee: str = "",
              line: str = "") -> str | None:
        """None if the token is valid now for this call SID, caller, callee and line, else why not (for the log,
        never the token)."""
        if not token:
            return "no stream token"
        # The token comes from whoever opened the socket: non-ASCII (compare_digest raises), Unicode digits
        # (int() raises) or thousands of digits (int() refuses) must be a refusal, not an exception.
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            return "malformed stream token"
        expires_text, _, mac = token.partition(".")
        if not expires_text.isdigit() or len(expires_text) > MAX_EXPIRY_DIGITS or not mac:
            return "malformed stream token"
        expires = int(expires_text)
        if not hmac.compare_digest(mac, self._mac(call_sid, caller, callee, line, expires)):
            return "stream token does not match the call"
        if expires < self._clock():
            return "stream token expired"
        return None

    def expires_at(self, token: str) -> float:
        return float(token.partition(".")[0] or 0)
