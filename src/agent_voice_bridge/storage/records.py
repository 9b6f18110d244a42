"""What the store keeps about a call: plain dataclasses, so callers never touch SQLAlchemy.

``CallRecord`` is one row per Twilio call (keyed by the CallSid, which is what every webhook, status
callback and media stream carries); ``Turn`` is one utterance in its transcript; ``Message`` a voicemail
the caller left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


LATENCY_SEGMENTS = ("endpointing", "stt", "request", "llm", "model", "tts", "bridge", "playout", "barge_detect",
                    "barge_clear", "barge_confirm")
"""The segments of a turn in ``CallRecord.turn_latency``, in the order they happen (observability/timeline.py
measures them; a speech-to-speech turn has no stt, llm or tts, a cascade's no model)."""


@dataclass
class CallRecord:
    """One phone call. Everything but ``call_sid`` and ``started_at`` has a default, so the pieces of
    the bridge that learn about a call at different times (the dialer, the media stream, status
    callbacks) can each fill in what they know."""

    call_sid: str
    started_at: datetime  # timezone-aware UTC
    stream_sid: str = ""
    caller: str = ""  # From
    callee: str = ""  # To
    direction: str = "inbound"  # inbound | outbound
    pipeline: str = ""  # the YAML file the call ran (chain.source)
    line: str = ""  # the server's line the call was on (its pipeline file's name); "" before lines existed
    status: str = "in_progress"  # ringing, in_progress, completed, busy, no_answer, failed
    outcome: str | None = None  # completed | rejected | backend_failure | caller_hung_up | ... (None while running)
    reason: str | None = None  # why (e.g. a refusal reason)
    ended_at: datetime | None = None
    barge_ins: int = 0
    replies: int = 0
    first_reply_ms: float | None = None
    session_switches: int = 0  # times the model's session was replaced mid-call (a Gemini goAway)
    usage: dict[str, int] = field(default_factory=dict)  # model token usage, summed
    parameters: dict[str, str] = field(default_factory=dict)  # TwiML <Parameter>s
    recording_path: str | None = None
    turn_latency: list[dict[str, Any]] = field(default_factory=list)
    """Per reply: ``{"turn", "at_ms", "segments": {name: ms}, "total_ms"}`` (observability/timeline.py)."""
    transfer_destination: str | None = None  # the AI's transfer tool: the destination's name (billing)
    transfer_to: str | None = None  # and its number
    transfer_status: str | None = None  # how Twilio's <Dial> ended: completed, no_answer, busy, failed, canceled

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to end; None while the call is still running."""
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


@dataclass
class Turn:
    """One utterance. Agent turns cut off by a barge-in keep only what the caller actually heard, so a
    later call's "memory" matches the caller's."""

    speaker: str  # "caller" | "agent"
    text: str
    started_ms: float  # ms since the call started
    truncated: bool = False  # an agent turn cut off by a barge-in (text holds only what was heard)
    heard_ms: float | None = None  # agent: ms of audio the caller heard
    seq: int = 0  # order within the call, assigned by the store (1, 2, ...)


@dataclass
class Message:
    """A voicemail message: the caller's audio (a WAV file beside the recordings) and, once a local
    transcriber has heard it, its transcript."""

    created_at: datetime  # timezone-aware UTC: when the recording began (the beep)
    duration_ms: float
    audio_path: str  # 8 kHz mono PCM16 WAV
    ended_by: str  # silence | key | max_seconds | hangup
    transcript: str | None = None  # None until transcribed (or with no transcriber installed)
    id: int = 0  # assigned by the store
    call_sid: str = ""  # filled in by the store's reads


@dataclass
class Forgotten:
    """What ``CallStore.forget_caller`` deleted: counts a person can check, and the audio files to delete
    (the store holds paths, not audio)."""

    calls: int = 0
    turns: int = 0
    messages: int = 0
    audio_paths: list[str] = field(default_factory=list)
