"""Values from the wire, made safe to put in a log line.

A CallSid, a stream SID, a caller number or an error text about a message may come
from whoever opened a socket or posted a form. Written verbatim, a CR/LF forges
log lines and a 900 KB "CallSid" becomes one 900 KB line. Every protocol value
that reaches the log goes through :func:`shown`.
"""

from __future__ import annotations

MAX_LOGGED_CHARS = 120
"""A Twilio SID is 34 characters, an E.164 number at most 16: more is cut (the length is kept)."""


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(value: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """``value`` as one log-safe piece: control (and other unprintable) characters escaped, cut to ``limit``."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    return f"{text}…(+{cut} chars)" if cut > 0 else text
