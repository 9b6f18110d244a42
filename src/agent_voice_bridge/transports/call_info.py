"""The facts of one call, handed to every stage that asks for them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent_voice_bridge.observability.timeline import TurnTimeline
from agent_voice_bridge.transports.playback import PlaybackTracker

if TYPE_CHECKING:
    from agent_voice_bridge.storage.journal import CallJournal
    from agent_voice_bridge.transports.call_control import CallControl
    from agent_voice_bridge.transports.call_recorder import CallRecorder
    from agent_voice_bridge.transports.twilio_protocol import Event
    from agent_voice_bridge.transports.twilio_stream import TwilioMediaStream


SOFTPHONE_CALLER = "browser"
"""The caller ID of the browser softphone's calls (``/phone``): it has no number, and no Twilio call behind it."""


@dataclass
class CallStats:
    """What the call's summary line and metrics report."""

    barge_ins: int = 0
    first_reply_ms: float | None = None
    replies: int = 0
    session_switches: int = 0
    """Times the model's session was replaced mid-call (a Gemini goAway), the caller none the wiser."""


@dataclass
class CallInfo:
    """Who is calling whom, Twilio's identifiers, the stream, and playback truth."""

    call_sid: str
    stream_sid: str
    account_sid: str = ""
    caller: str = ""
    callee: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    line: str = ""
    """The name of the line this call was given (its chain's line), for its record and metrics."""
    started_at: float = field(default_factory=time.time)
    stream: TwilioMediaStream | None = None
    playback: PlaybackTracker = field(default_factory=PlaybackTracker)
    stats: CallStats = field(default_factory=CallStats)
    timeline: TurnTimeline = field(default_factory=TurnTimeline)
    """Each turn's latency, segment by segment (its ``line`` is set when the call's line is known)."""
    control: CallControl | None = None
    """What a stage or tool may do to the call (hang up, end, text); set by the session that runs it."""
    journal: CallJournal | None = None
    """Where the transport stages report turns, when calls are stored."""
    recorder: CallRecorder | None = None
    """The call's stereo recording, when ``storage.record`` is on."""
    memory: str = ""
    """What this caller said in earlier calls, for AI stages with ``memory`` on."""
    recordings: str = "recordings"
    """The directory for this call's audio files (``storage.recordings``): voicemail messages."""
    handover: list[Event | None] | None = None
    """While the call moves to a fallback chain: what the old ``twilio.input`` read but did not pass on."""
    hello_timeout_secs: float | None = None
    """Set on outbound calls that wait for the callee's hello before the AI greets (see services/opening)."""
    on_key: Callable[[str], Awaitable[None]] | None = None
    """Called with each key the caller presses, when a stage wants them at once (a warm transfer's 1 / 2); fed by
    ``twilio.input`` right where it pushes the key's ``InputDTMFFrame``, on whichever stream the call is on now."""
    next_stream: asyncio.Future[TwilioMediaStream | None] | None = None
    """While the call moves to a new media stream (``send_digits``): the stream it moves to, once Twilio opens it
    (None: it never came). ``twilio.input`` then reads the new stream instead of taking the old one's ``stop``
    for a hang-up."""
    caller_spoke: asyncio.Event = field(default_factory=asyncio.Event)
    """Set the first time the caller is heard speaking (a VAD onset, the model's, or a transcription)."""

    def __post_init__(self) -> None:
        self.timeline.line = self.line
        self.playback.on_played = self.timeline.played
        self.playback.on_clear_confirmed = self.timeline.clear_confirmed

    @property
    def softphone(self) -> bool:
        """A call from the browser softphone: what would change the call at Twilio (a transfer) is shown instead."""
        return self.caller == SOFTPHONE_CALLER

    @property
    def direction(self) -> str:
        """``outbound`` for a call the bridge placed (``dial``), else ``inbound``."""
        return self.parameters.get("direction", "inbound")

    @property
    def person(self) -> str:
        """The number of the person on the line: the caller, or the callee of a call we placed."""
        return self.callee if self.direction == "outbound" else self.caller

    @property
    def line_number(self) -> str:
        """The bridge's own number on this call (which line it is): the callee, or the caller of a call we placed."""
        return self.caller if self.direction == "outbound" else self.callee

    def facts(self) -> dict[str, str]:
        """Template values for instructions and greetings: every <Parameter> plus the basics."""
        return {**self.parameters, "caller": self.caller, "callee": self.callee, "call_sid": self.call_sid,
                "local_time": time.strftime("%A %d %B %Y, %H:%M", time.localtime(self.started_at))}
