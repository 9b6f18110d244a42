"""Twilio call SIDs: the one shape a ``CallSid`` from the outside may have.

A call SID arrives in webhooks and in the media stream's ``start``, from whoever
sends them; it also names the call's files (its recording, its voicemail). So it
is checked where it enters, and again before it becomes part of a path: a value
like ``../../x`` or ``/etc/x`` must never choose where the server writes.
"""

from __future__ import annotations

import re

CALL_SID = re.compile(r"CA[0-9a-fA-F]{32}")
"""``CA`` and 32 hex digits, as Twilio writes them (and the softphone and simulated caller make them)."""


def is_call_sid(value: object) -> bool:
    return isinstance(value, str) and CALL_SID.fullmatch(value) is not None


def file_stem(call_sid: str) -> str:
    """The call SID as a file name, or ValueError: a path is never built from anything else."""
    if not is_call_sid(call_sid):
        raise ValueError("not a Twilio call SID (CA + 32 hex digits); no file is named after it")
    return call_sid
