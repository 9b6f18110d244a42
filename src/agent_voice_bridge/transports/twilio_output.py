"""``twilio.output``: the agent's audio to Twilio, with marks that tell what was heard.

Audio is sent as it comes (Twilio buffers and plays it at its own clock), with a
mark every ``mark_every_ms`` of audio and at the end of each segment; the call's
:class:`PlaybackTracker` turns the echoes into "still playing" and "ms heard".
On an interruption the output sends ``clear`` once if anything may still be
playing, so Twilio drops the rest of the interrupted turn.

Pushes upstream (and downstream) ``BotStartedSpeakingFrame`` when a segment's
first audio leaves and ``BotStoppedSpeakingFrame`` when its last mark comes back or
it is cleared; ``vad.interrupter`` uses them to know the caller is talking over
the agent. Audio frames marked ``interruptible=False`` (``loopback``) are sent
without marks and never count as the agent speaking. Filler audio (``FILLER`` in
its metadata, from ``thinking.filler``) is not the agent's either: it is in no
segment, a ``FillerSentFrame`` gets it a mark of its own, and a ``FillerStoppedFrame``
a ``clear`` when some of it may still be queued, before the agent's audio follows.

pipecat's ``OutputDTMFFrame``/``OutputDTMFUrgentFrame`` (a stage's way to press keys)
become the call's ``send_digits``: Twilio has no key message on the stream, so the call
moves to a new stream around the keys (see ``calls.live_call``).
"""

from __future__ import annotations

import time

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    LLMContextUserTurnFrame,
    MetricsFrame,
    OutputDTMFFrame,
    OutputDTMFUrgentFrame,
    TranscriptionFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import LLMUsageMetricsData
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pydantic import Field

from agent_voice_bridge import metrics
from agent_voice_bridge.pipelines.formats import MULAW_8K, AudioFormat, Side, require
from agent_voice_bridge.pipelines.stage import Stage, StageContext, StageParams
from agent_voice_bridge.processors.audio_stage import AudioSink
from agent_voice_bridge.processors.frames import (
    CALLER_STARTED,
    FILLER,
    FillerSentFrame,
    FillerStoppedFrame,
    OutputMulawAudioFrame,
)
from agent_voice_bridge.transports.call_control import CallControl
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.twilio_stream import TwilioMediaStream

BYTES_PER_MS = 8  # 8 kHz μ-law
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def token_usage(frame: MetricsFrame) -> dict[str, int]:
    """The model's token counts in a metrics frame (pipecat reports usage per response)."""
    usage: dict[str, int] = {}
    for data in frame.data:
        if isinstance(data, LLMUsageMetricsData):
            for name in USAGE_FIELDS:
                usage[name] = usage.get(name, 0) + (getattr(data.value, name, 0) or 0)
    return usage


class TwilioOutputParams(StageParams):
    mark_every_ms: int = Field(default=100, ge=20, le=5000,
                               description="Mark spacing: the resolution of 'how much did the caller hear'.")


class TwilioOutput(Stage, AudioSink, FrameProcessor):
    """Sends ``OutputMulawAudioFrame`` as Twilio ``media``, plus ``mark`` and ``clear``."""

    Params = TwilioOutputParams
    role = "sink"

    def __init__(self, *, call: CallInfo, mark_every_ms: int = 100, **kwargs):
        # Direct mode: the agent's audio is sent from the task that produced it, without two queue hops per
        # frame. Nothing is held here for an interruption to drop: what was pushed before it is on its way to
        # Twilio ahead of the ``clear`` (the stream's lock keeps that order), and ``clear`` drops it there.
        super().__init__(enable_direct_mode=True, **kwargs)
        if call.stream is None:
            raise ValueError("twilio.output needs a call with a media stream")
        self._call = call  # its stream, not a copy: pressing keys (send_digits) moves the call to a new one
        self._playback = call.playback
        self._mark_every_ms = mark_every_ms
        self._unmarked_ms = 0.0
        self._filler_unmarked = False  # filler audio sent since its last mark
        self._in_segment = False
        self._speaking = False
        self._playback.on_idle = self._on_playback_idle
        self._caller_stopped_at: float | None = None  # for first-reply latency
        self._caller_started_at: float | None = None  # speech onset, for barge-in latency

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> None:
        require(audio_in, encoding="mulaw", rates=(MULAW_8K.rate,))
        return None

    @classmethod
    def create(cls, params: TwilioOutputParams, ctx: StageContext) -> TwilioOutput:
        assert ctx.call is not None
        return cls(call=ctx.call, mark_every_ms=params.mark_every_ms)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputMulawAudioFrame):
            await self._send_audio(frame)
            return
        if isinstance(frame, InterruptionFrame):
            await self._interrupt()
        elif isinstance(frame, (TTSStartedFrame, TTSStoppedFrame)):
            await self._end_segment()
        elif isinstance(frame, (OutputDTMFFrame, OutputDTMFUrgentFrame)):
            self._press(frame.to_string())
        elif isinstance(frame, FillerSentFrame):
            await self._mark_filler()
        elif isinstance(frame, FillerStoppedFrame):
            await self._clear_filler()
        self._note(frame)
        await self.push_frame(frame, direction)

    async def take_audio(self, frame: Frame) -> None:
        """Audio handed on by a run of audio stages (the μ-law encoder): sent without a pipecat hop."""
        if type(frame) is OutputMulawAudioFrame and not self._cancelling:
            await self._send_audio(frame)
        else:
            await self.queue_frame(frame, FrameDirection.DOWNSTREAM)

    def _press(self, digits: str) -> None:
        """Keys a stage asked for: pressed by the call, off the audio path (the stream switch takes a moment)."""
        control = self._call.control
        if control is None or not control.can_send_digits:
            logger.warning(f"call {self._call.call_sid}: a stage asked to press keys, but this line cannot "
                           "(no Twilio account)")
            return
        self.create_task(self._send_digits(control, digits), name="send_digits")

    async def _send_digits(self, control: CallControl, digits: str) -> None:
        try:
            await control.send_digits(digits)
        except (ValueError, RuntimeError, OSError) as exc:
            logger.warning(f"call {self._call.call_sid}: pressing keys failed: {exc}")

    def _note(self, frame: Frame) -> None:
        """What the latency figures, the call's journal and its opening line learn from frames passing by."""
        journal = self._call.journal
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            self._caller_stopped_at = frame.timestamp - frame.stop_secs
        elif isinstance(frame, CALLER_STARTED):  # our VAD's, or the model's own
            if isinstance(frame, VADUserStartedSpeakingFrame):
                self._caller_started_at = frame.timestamp - frame.start_secs
            self._call.caller_spoke.set()
            if journal is not None:
                journal.caller_speaking()
        elif journal is None:
            return
        elif isinstance(frame, TTSTextFrame):
            journal.agent_text(frame.text if frame.includes_inter_frame_spaces else f" {frame.text}")
        elif isinstance(frame, TTSStartedFrame):
            journal.agent_turn_started()
        elif isinstance(frame, TTSStoppedFrame):
            journal.agent_text_done()
        elif isinstance(frame, (TranscriptionFrame, LLMContextUserTurnFrame)):
            journal.caller_said(frame.text)  # a cascade's user aggregator broadcasts the turn it took
        elif isinstance(frame, MetricsFrame):
            journal.add_usage(token_usage(frame))

    @property
    def _stream(self) -> TwilioMediaStream:
        """The call's current stream, never a copy: pressing keys (send_digits) moves the call to a new one."""
        stream = self._call.stream
        assert stream is not None
        return stream

    async def _clear(self) -> float:
        """Have Twilio drop what it holds (the agent's audio or filler); how much of the segment was heard."""
        await self._stream.send(self._stream.messages.clear())
        self._filler_unmarked = False
        return self._playback.on_clear()

    async def _send_audio(self, frame: OutputMulawAudioFrame) -> None:
        await self._stream.send(self._stream.messages.media(frame.audio))
        if self._call.recorder is not None:
            self._call.recorder.agent_audio(frame.audio)
        if not frame.interruptible:
            return
        if frame.metadata.get(FILLER):
            self._filler_unmarked = True
            return
        if not self._in_segment:
            self._in_segment = True
            segment = self._playback.new_segment()
            self._call.timeline.reply_sent(segment)
            if self._call.journal is not None:
                self._call.journal.agent_audio(segment)
        ms = len(frame.audio) / BYTES_PER_MS
        self._playback.audio_sent(ms, frame.audio)
        self._unmarked_ms += ms
        if not self._speaking:
            self._speaking = True
            self._reply_started()
            await self.broadcast_frame(BotStartedSpeakingFrame)
        if self._unmarked_ms >= self._mark_every_ms:
            await self._send_mark()

    async def _send_mark(self) -> None:
        self._unmarked_ms = 0.0
        await self._mark(self._playback.next_mark())

    async def _mark_filler(self) -> None:
        if self._filler_unmarked:
            self._filler_unmarked = False
            await self._mark(self._playback.next_filler_mark())

    async def _mark(self, name: str) -> None:
        if self._call.recorder is not None:
            self._call.recorder.mark_sent(name)  # before the send: its echo may be read during the await
        await self._stream.send(self._stream.messages.mark(name))

    async def _clear_filler(self) -> None:
        """Drop what of the filler Twilio may still hold. Only filler can be queued: it plays when the agent
        has stopped being audible, and stops before the agent's next audio."""
        if not (self._filler_unmarked or self._playback.filler_queued):
            return
        await self._clear()
        if self._call.recorder is not None:
            self._call.recorder.cleared()

    async def _end_segment(self) -> None:
        if self._in_segment and self._unmarked_ms > 0:
            await self._send_mark()
        self._in_segment = False

    async def _interrupt(self) -> None:
        self._in_segment = False
        self._unmarked_ms = 0.0
        if not self._playback.playing and not self._speaking:
            return
        heard = await self._clear()
        self._call.timeline.cleared()
        self._settled(cleared=True)
        self._call.stats.barge_ins += 1
        metrics.BARGE_INS.labels(self._call.line).inc()
        if self._caller_started_at is not None:
            metrics.BARGE_IN_LATENCY.labels(self._call.line).observe(max(time.time() - self._caller_started_at, 0.0))
        logger.info(f"call {self._call.call_sid}: barge-in, cleared after {heard:.0f} ms of segment "
                    f"{self._playback.segment}")
        if self._call.journal is not None:
            self._call.journal.update(barge_ins=self._call.stats.barge_ins)
        await self._on_playback_idle()

    def _reply_started(self) -> None:
        stats = self._call.stats
        stats.replies += 1
        if self._caller_stopped_at is not None:
            latency = max(time.time() - self._caller_stopped_at, 0.0)
            if stats.first_reply_ms is None:
                stats.first_reply_ms = latency * 1000
                metrics.FIRST_REPLY.labels(self._call.line).observe(latency)
                if self._call.journal is not None:
                    self._call.journal.update(first_reply_ms=round(stats.first_reply_ms, 1))
            self._caller_stopped_at = None

    def _settled(self, cleared: bool) -> None:
        """Everything sent has played, or a clear dropped the rest: the journal can finish those turns."""
        if self._call.recorder is not None and cleared:
            self._call.recorder.cleared()
        if self._call.journal is not None:
            self._call.journal.playback_settled(self._playback.heard_ms, self._playback.sent_ms, cleared)

    async def _on_playback_idle(self) -> None:
        if not self._playback.playing:
            self._settled(cleared=False)
        if self._speaking and not self._in_segment:
            self._speaking = False
            await self.broadcast_frame(BotStoppedSpeakingFrame)
