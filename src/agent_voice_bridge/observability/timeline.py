"""Where each turn's time goes: one timeline per call, on one clock (``time.monotonic``).

A reply's moments, in the order they happen::

    caller_stopped → turn_end → [stt_final] → request → [llm_first_token] → model_audio → sent → played

and, when the caller talks over it: ``onset → interrupted → cleared → confirmed``. Each segment is named by
where it ends (:data:`REPLY_SEGMENTS`, :data:`BARGE_SEGMENTS`), so consecutive segments add up to the whole
(caller stopped → first audio played).

Most moments are pipecat frames, seen by :class:`TimelineObserver` (a pipecat observer: the VAD's or the
model's own end of turn, the frame that reaches the AI stage, the AI's first text and audio, the
interruption). What no frame carries is told directly by the Twilio side: the first audio of a reply sent
(``twilio.output``), its first audio played and a ``clear`` confirmed (the playback tracker, from Twilio's
mark echoes). Observers run behind the frames they watch, so the moments are kept as a time-stamped log and
turns are worked out from it by time, not by arrival order.

pipecat's ``TurnTrackingObserver`` counts turns from the caller's *start* to the bot's stop plus a timeout
and its tracing spans carry the model's prompts; neither says when Twilio played the audio, which is the
point here, so turns are cut at each reply the caller was sent.
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    Frame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    TranscriptionFrame,
    TTSStoppedFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FrameProcessed, FramePushed
from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService

from agent_voice_bridge import metrics
from agent_voice_bridge.processors.frames import OutputMulawAudioFrame
from agent_voice_bridge.storage.records import LATENCY_SEGMENTS

REPLY_POINTS = ("caller_stopped", "turn_end", "stt_final", "request", "llm_first_token", "model_audio", "sent",
                "played")
BARGE_POINTS = ("onset", "interrupted", "cleared", "confirmed")
REPLY_SEGMENTS = {
    "turn_end": "endpointing",  # caller stopped → the VAD (or the model) decided the turn was over
    "stt_final": "stt",  # → the speech-to-text's final transcript (cascade)
    "request": "request",  # → the turn reached the AI stage (the model is asked for a reply)
    "llm_first_token": "llm",  # → the LLM's first token (cascade)
    "model_audio": "model",  # → the AI's first audio ("tts" in a cascade: after the LLM's first token)
    "sent": "bridge",  # → its first audio sent to Twilio
    "played": "playout",  # → Twilio started playing it (mark echo)
}
BARGE_SEGMENTS = {
    "interrupted": "barge_detect",  # the caller's speech onset → the interruption raised
    "cleared": "barge_clear",  # → ``clear`` sent to Twilio
    "confirmed": "barge_confirm",  # → Twilio confirmed it (the pending marks came back)
}
AI_AUDIO = (OutputAudioRawFrame, OutputMulawAudioFrame)
"""What the AI stage sends the caller: PCM, or μ-law straight through (``openai.realtime`` in pcmu mode)."""
SEGMENTS = LATENCY_SEGMENTS
"""Every segment name, in the order they happen: the ``segment`` label's values."""


@dataclass(frozen=True)
class Segment:
    name: str
    start: float  # monotonic seconds
    end: float

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000.0


@dataclass
class TurnLatency:
    """One reply's moments (monotonic seconds) and, if the caller talked over it, the barge-in's."""

    number: int
    points: dict[str, float] = field(default_factory=dict)
    barge: dict[str, float] = field(default_factory=dict)

    def segments(self) -> list[Segment]:
        """The reply's segments, then the barge-in's, each from the previous moment that is known."""
        return self.reply_segments() + self.barge_segments()

    def reply_segments(self) -> list[Segment]:
        return _chain(self.points, REPLY_POINTS, self._reply_name)

    def barge_segments(self) -> list[Segment]:
        return _chain(self.barge, BARGE_POINTS, BARGE_SEGMENTS.get)

    def _reply_name(self, point: str) -> str | None:
        if point == "model_audio" and "llm_first_token" in self.points:
            return "tts"
        return REPLY_SEGMENTS.get(point)

    @property
    def total_ms(self) -> float | None:
        """Caller stopped (or the first moment known) → first audio played, when both are known."""
        reply = self.reply_segments()
        if not reply or "played" not in self.points:
            return None
        return (reply[-1].end - reply[0].start) * 1000.0

    def as_record(self, t0: float) -> dict[str, Any]:
        """For the call record: when the turn began (ms since ``t0``, the call's start) and its segments."""
        start = min(self.points.values(), default=min(self.barge.values(), default=t0))
        return {"turn": self.number, "at_ms": round((start - t0) * 1000.0, 1),
                "segments": {s.name: round(s.ms, 1) for s in self.segments()},
                "total_ms": None if self.total_ms is None else round(self.total_ms, 1)}


def _chain(points: dict[str, float], order: tuple[str, ...], name_of: Callable[[str], str | None]) -> list[Segment]:
    """Consecutive segments between the known moments, in ``order``; one out of order (seen late, or a
    previous turn's) is left out, so the segments always add up to first → last."""
    segments: list[Segment] = []
    previous: float | None = None
    for point in order:
        at = points.get(point)
        if at is None:
            continue
        if previous is not None and at >= previous:
            name = name_of(point)
            if name is not None:
                segments.append(Segment(name, previous, at))
        if previous is None or at >= previous:
            previous = at
    return segments


FROM_TTS = -1
"""``model_audio``'s tag when a cascade's TTS spoke (a speech-to-speech model's own text is no "llm" step)."""


class TurnTimeline:
    """One call's moments, and the turns they make. Kept on the call (``CallInfo.timeline``)."""

    def __init__(self, line: str = "", started: float | None = None):
        self.line = line
        self.started = time.monotonic() if started is None else started
        self._moments: dict[str, list[tuple[float, int]]] = {}  # kind → sorted (when, tag)
        self._played: dict[int, float] = {}  # playback segment → when it began playing
        self._reported: set[tuple[int, str]] = set()  # (turn, "reply" | "barge") already in the metrics
        self._model_speaking = False
        self._llm_answering = False

    def note(self, kind: str, at: float | None = None, tag: int = 0) -> None:
        """Log a moment (``at``: monotonic seconds, default now; ``tag``: sent's and played's playback
        segment, model_audio's FROM_TTS)."""
        at = time.monotonic() if at is None else at
        if kind == "played":
            self._played.setdefault(tag, at)
        bisect.insort(self._moments.setdefault(kind, []), (at, tag))

    # -- what the Twilio side tells -------------------------------------------------------------------------
    def reply_sent(self, segment: int) -> None:
        """``twilio.output`` sent the first audio of playback segment ``segment``."""
        self.note("sent", tag=segment)

    def played(self, segment: int, at: float) -> None:
        """Twilio started playing ``segment`` at ``at`` (from its first mark echo)."""
        self.note("played", at, segment)
        self.report(final=False)

    def cleared(self) -> None:
        self.note("cleared")

    def clear_confirmed(self) -> None:
        self.note("confirmed")
        self.report(final=False)

    # -- what the frames tell (see TimelineObserver) ---------------------------------------------------------
    def frame(self, frame: Frame, source: Any, at: float) -> None:
        """A frame first pushed by ``source`` at ``at``."""
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            self.note("caller_stopped", _monotonic(frame.timestamp) - frame.stop_secs)
            self.note("turn_end", at)
        elif isinstance(frame, ProposedUserStoppedSpeakingFrame):  # the model's own end of turn
            self.note("turn_end", at)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self.note("onset", _monotonic(frame.timestamp) - frame.start_secs)
        elif isinstance(frame, ProposedUserStartedSpeakingFrame):
            self.note("onset", at)
        elif isinstance(frame, InterruptionFrame):
            self.note("interrupted", at)
            self._model_speaking = False
        elif isinstance(frame, TranscriptionFrame) and isinstance(source, STTService):
            self.note("stt_final", at)
        elif isinstance(frame, LLMTextFrame) and isinstance(source, LLMService) and not self._llm_answering:
            self._llm_answering = True
            self.note("llm_first_token", at)
        elif isinstance(frame, AI_AUDIO) and _is_ai(source) and not self._model_speaking:
            self._model_speaking = True
            self.note("model_audio", at, FROM_TTS if isinstance(source, TTSService) else 0)
        elif isinstance(frame, (TTSStoppedFrame, LLMFullResponseEndFrame)) and _is_ai(source):
            self._model_speaking = self._llm_answering = False

    def reached(self, frame: Frame, processor: Any, at: float) -> None:
        """``processor`` took ``frame`` in at ``at``: the AI stage being handed the caller's turn."""
        if processor_role(processor) == "responder" and isinstance(frame, (UserStoppedSpeakingFrame,
                                                                           LLMContextFrame)):
            self.note("request", at)
            self._model_speaking = self._llm_answering = False

    # -- the turns ----------------------------------------------------------------------------------------------
    def turns(self, latest: int | None = None) -> list[TurnLatency]:
        """Every reply the caller was sent (or the ``latest`` few), numbered from 1, with the moments that led
        to it and, if the caller talked over it, the barge-in's."""
        sents = self._moments.get("sent", [])
        first = 0 if latest is None else max(0, len(sents) - latest)
        return [self._turn(i, sents) for i in range(first, len(sents))]

    def _turn(self, i: int, sents: list[tuple[float, int]]) -> TurnLatency:
        sent, segment = sents[i]
        floor = sents[i - 1][0] if i else -math.inf
        ceiling = sents[i + 1][0] if i + 1 < len(sents) else math.inf
        turn = TurnLatency(i + 1, {"sent": sent})
        anchor, spoken_by_tts = sent, True
        for kind in reversed(REPLY_POINTS[:-2]):  # the moments before it, each at or before the next
            if kind == "llm_first_token" and not spoken_by_tts:
                continue  # a speech-to-speech model's text is its transcript, not a step before its audio
            found = self._last(kind, floor, anchor)
            if found is not None:
                at, tag = found
                turn.points[kind] = anchor = at
                if kind == "model_audio":
                    spoken_by_tts = tag == FROM_TTS
        if segment in self._played:
            turn.points["played"] = max(self._played[segment], sent)  # a buffer that ran dry makes it early
        cleared = self._first("cleared", sent, ceiling)
        if cleared is None:
            return turn
        turn.barge["cleared"] = cleared
        onset = self._last("onset", turn.points.get("turn_end", floor), cleared)
        if onset is not None:
            turn.barge["onset"] = onset[0]
        interrupted = self._first("interrupted", onset[0] if onset else sent, cleared)  # a model's own: no onset
        if interrupted is not None:
            turn.barge["interrupted"] = interrupted
        confirmed = self._first("confirmed", cleared, math.inf)
        if confirmed is not None:
            turn.barge["confirmed"] = confirmed
        return turn

    def _last(self, kind: str, after: float, until: float) -> tuple[float, int] | None:
        """The latest ``kind`` moment in ``(after, until]``."""
        moments = self._moments.get(kind, [])
        i = bisect.bisect_right(moments, (until, math.inf)) - 1
        return moments[i] if i >= 0 and moments[i][0] > after else None

    def _first(self, kind: str, since: float, before: float) -> float | None:
        """The earliest ``kind`` moment in ``[since, before]``."""
        moments = self._moments.get(kind, [])
        i = bisect.bisect_left(moments, (since, -math.inf))
        return moments[i][0] if i < len(moments) and moments[i][0] <= before else None

    def report(self, *, final: bool) -> None:
        """Put the segments of turns that are complete (all of them, when ``final``) into the metrics."""
        for turn in self.turns(latest=None if final else RECENT_TURNS):
            for part, segments, done in (("reply", turn.reply_segments(), "played" in turn.points),
                                         ("barge", turn.barge_segments(), "confirmed" in turn.barge)):
                if not segments or (turn.number, part) in self._reported or not (done or final):
                    continue
                self._reported.add((turn.number, part))
                for segment in segments:
                    metrics.TURN_SEGMENT.labels(segment.name, self.line).observe(segment.end - segment.start)

    def records(self) -> list[dict[str, Any]]:
        """The turns for the call record."""
        return [turn.as_record(self.started) for turn in self.turns()]

    def summary(self) -> str:
        """For the call's summary log line: each segment's median over the turns, and each turn's total."""
        turns = self.turns()
        if not turns:
            return "turns=0"
        by_name: dict[str, list[float]] = {}
        for turn in turns:
            for segment in turn.segments():
                by_name.setdefault(segment.name, []).append(segment.ms)
        medians = " ".join(f"{name}={statistics.median(by_name[name]):.0f}" for name in SEGMENTS if name in by_name)
        totals = [f"{t.total_ms:.0f}" if t.total_ms is not None else "-" for t in turns]
        shown = ",".join(totals[:MAX_TOTALS_SHOWN]) + (",…" if len(totals) > MAX_TOTALS_SHOWN else "")
        return f"turns={len(turns)} turn_ms(median) {medians} totals=[{shown}]"


MAX_TOTALS_SHOWN = 30
RECENT_TURNS = 3
"""Mid-call, a played or confirmed moment can only complete one of the last few turns: only those are worked
out again (a long call's earlier turns are not), and the call's end reports whatever is left."""


def processor_role(processor: Any) -> str | None:
    return getattr(processor, "role", None)


def _is_ai(source: Any) -> bool:
    """The AI's own output: a responder stage (speech-to-speech model, echo) or a cascade's TTS."""
    return processor_role(source) == "responder" or isinstance(source, TTSService)


def _monotonic(wall: float) -> float:
    """A ``time.time()`` stamp (pipecat's VAD frames) on the monotonic clock."""
    return wall - (time.time() - time.monotonic())


class CallClock(SystemClock):
    """pipecat's pipeline clock, which also says where its zero is on ``time.monotonic``."""

    origin = 0.0

    def start(self):
        super().start()
        self.origin = time.monotonic() - self.get_time() / 1e9

    def monotonic(self, timestamp_ns: int) -> float:
        return self.origin + timestamp_ns / 1e9


class TimelineObserver(BaseObserver):
    """Feeds a call's :class:`TurnTimeline` from its pipeline's frames (each frame's first push, and what the
    AI stage is handed)."""

    def __init__(self, timeline: TurnTimeline, clock: CallClock, **kwargs):
        super().__init__(observe_every_push=False, **kwargs)
        self._timeline = timeline
        self._clock = clock

    async def on_push_frame(self, data: FramePushed):
        self._timeline.frame(data.frame, data.source, self._clock.monotonic(data.timestamp))

    async def on_process_frame(self, data: FrameProcessed):
        self._timeline.reached(data.frame, data.processor, self._clock.monotonic(data.timestamp))
