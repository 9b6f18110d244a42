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
without marks and never count as the agent speaking.
"""

from __future__ import annotations

import time

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pydantic import Field

from agent_voice_bridge import metrics
from agent_voice_bridge.pipelines.formats import MULAW_8K, AudioFormat, Side, require
from agent_voice_bridge.pipelines.stage import Stage, StageContext, StageParams
from agent_voice_bridge.processors.frames import OutputMulawAudioFrame
from agent_voice_bridge.transports.call_info import CallInfo

BYTES_PER_MS = 8  # 8 kHz μ-law


class TwilioOutputParams(StageParams):
    mark_every_ms: int = Field(default=100, ge=20, le=5000,
                               description="Mark spacing: the resolution of 'how much did the caller hear'.")


class TwilioOutput(Stage, FrameProcessor):
    """Sends ``OutputMulawAudioFrame`` as Twilio ``media``, plus ``mark`` and ``clear``."""

    Params = TwilioOutputParams
    role = "sink"

    def __init__(self, *, call: CallInfo, mark_every_ms: int = 100, **kwargs):
        super().__init__(**kwargs)
        if call.stream is None:
            raise ValueError("twilio.output needs a call with a media stream")
        self._call = call
        self._stream = call.stream
        self._playback = call.playback
        self._mark_every_ms = mark_every_ms
        self._unmarked_ms = 0.0
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
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            self._caller_stopped_at = frame.timestamp - frame.stop_secs
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._caller_started_at = frame.timestamp - frame.start_secs
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
        elif isinstance(frame, TTSStartedFrame):
            await self._end_segment()
        elif isinstance(frame, TTSStoppedFrame):
            await self._end_segment()
        await self.push_frame(frame, direction)

    async def _send_audio(self, frame: OutputMulawAudioFrame) -> None:
        stream = self._stream
        await stream.send(stream.messages.media(frame.audio))
        if not frame.interruptible:
            return
        if not self._in_segment:
            self._in_segment = True
            self._playback.new_segment()
        ms = len(frame.audio) / BYTES_PER_MS
        self._playback.audio_sent(ms)
        self._unmarked_ms += ms
        if not self._speaking:
            self._speaking = True
            self._reply_started()
            await self.broadcast_frame(BotStartedSpeakingFrame)
        if self._unmarked_ms >= self._mark_every_ms:
            await self._send_mark()

    async def _send_mark(self) -> None:
        self._unmarked_ms = 0.0
        await self._stream.send(self._stream.messages.mark(self._playback.next_mark()))

    async def _end_segment(self) -> None:
        if self._in_segment and self._unmarked_ms > 0:
            await self._send_mark()
        self._in_segment = False

    async def _interrupt(self) -> None:
        self._in_segment = False
        self._unmarked_ms = 0.0
        if not self._playback.playing and not self._speaking:
            return
        await self._stream.send(self._stream.messages.clear())
        heard = self._playback.on_clear()
        self._call.stats.barge_ins += 1
        metrics.BARGE_INS.inc()
        if self._caller_started_at is not None:
            metrics.BARGE_IN_LATENCY.observe(max(time.time() - self._caller_started_at, 0.0))
        logger.info(f"call {self._call.call_sid}: barge-in, cleared after {heard:.0f} ms of segment "
                    f"{self._playback.segment}")
        await self._on_playback_idle()

    def _reply_started(self) -> None:
        stats = self._call.stats
        stats.replies += 1
        if self._caller_stopped_at is not None:
            latency = max(time.time() - self._caller_stopped_at, 0.0)
            if stats.first_reply_ms is None:
                stats.first_reply_ms = latency * 1000
                metrics.FIRST_REPLY.observe(latency)
            self._caller_stopped_at = None

    async def _on_playback_idle(self) -> None:
        if self._speaking and not self._in_segment:
            self._speaking = False
            await self.broadcast_frame(BotStoppedSpeakingFrame)
