"""``twilio.input``: the call's audio, marks and key presses, read from Twilio's stream.

The server has already read ``connected`` and ``start`` (it needs the call's facts
to build the chain); this stage reads the rest. Mark echoes go to the call's
playback tracker rather than down the chain, since they describe what the caller
heard, not what they said. When the caller hangs up (``stop`` or a closed socket)
it cancels the pipeline: there is nobody left to flush audio to, unless the call is
moving to a new stream (``send_digits`` replaced its TwiML): then it reads on from the
new stream when the session hands it over. When the call moves to a fallback chain
(``call.handover``), this input stops reading and the next chain's input takes over the
stream, starting with any event this one had in hand.
"""

from __future__ import annotations

import asyncio
import time

from loguru import logger
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.frames.frames import (
    CancelFrame,
    CancelWorkerFrame,
    EndFrame,
    Frame,
    InputDTMFFrame,
    StartFrame,
    TranscriptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from agent_voice_bridge.log_values import shown
from agent_voice_bridge.pipelines.formats import MULAW_8K, AudioFormat, Side
from agent_voice_bridge.pipelines.stage import Stage, StageContext, StageParams
from agent_voice_bridge.processors.audio_stage import hand_on
from agent_voice_bridge.processors.frames import InputMulawAudioFrame
from agent_voice_bridge.transports.call_info import CallInfo
from agent_voice_bridge.transports.twilio_protocol import Dtmf, Mark, Media, Stop

SILENT_FRAME = b"\xff" * 160
"""20 ms of μ-law silence."""


class TwilioInput(Stage, FrameProcessor):
    """Pushes ``InputMulawAudioFrame`` (20 ms of μ-law each) and ``InputDTMFFrame`` downstream."""

    role = "source"

    def __init__(self, *, call: CallInfo, **kwargs):
        super().__init__(**kwargs)
        if call.stream is None:
            raise ValueError("twilio.input needs a call with a media stream")
        self._call = call
        self._stream = call.stream
        self._reader: asyncio.Task | None = None
        self._stopped = False

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        return MULAW_8K

    @classmethod
    def create(cls, params: StageParams, ctx: StageContext) -> TwilioInput:
        assert ctx.call is not None
        return cls(call=ctx.call)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            self._call.caller_spoke.set()
            if self._call.journal is not None:
                self._call.journal.caller_said(frame.text)  # speech-to-speech services push these up to here
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame) and self._reader is None:
            self._reader = self.create_task(self._read_stream(), name="read_stream")
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop_reader()

    async def cleanup(self):
        await super().cleanup()
        await self._stop_reader()

    async def _stop_reader(self) -> None:
        self._stopped = True
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            await self.cancel_task(reader)

    async def _read_stream(self) -> None:
        stream, playback, recorder = self._stream, self._call.playback, self._call.recorder
        backlog, self._call.handover = self._call.handover or [], None  # left unread by the chain before this one
        while True:
            event = backlog.pop(0) if backlog else await stream.receive()
            if self._stopped or self._call.handover is not None:
                # Being stopped (Python 3.11's wait_for may swallow the cancellation once a message is in), or
                # the call is moving to a fallback chain: the next chain's input reads from here on.
                if self._call.handover is not None:
                    self._call.handover.append(event)
                return
            if isinstance(event, Media):
                if recorder is not None:
                    recorder.caller_audio(event.payload)
                await hand_on(self, InputMulawAudioFrame(audio=event.payload))  # into the run, no hop
            elif isinstance(event, Mark):
                if recorder is not None:
                    recorder.mark_echoed(event.name)
                await playback.on_mark(event.name)
            elif isinstance(event, Dtmf):
                await self._push_dtmf(event.digit)
            elif event is None or isinstance(event, Stop):
                if self._call.next_stream is not None and await self._move_on():
                    stream = self._stream
                    continue
                break
        reason = "caller hung up" if event is not None else "stream closed"
        logger.info(f"call {shown(self._call.call_sid)}: {reason}")
        self._reader = None
        await self.push_frame(CancelWorkerFrame(reason=reason), FrameDirection.UPSTREAM)

    async def _move_on(self) -> bool:
        """The stream ended because the call is moving to a new one: wait for it; False if none comes."""
        moved = self._call.next_stream
        assert moved is not None
        stopped = time.monotonic()
        stream = await asyncio.shield(moved)  # send_digits resolves it, with None on any failure
        self._call.next_stream = None
        if stream is None:
            return False
        self._stream = stream
        if self._call.recorder is not None:  # the gap as silence, so the caller's audio after it keeps its time
            self._call.recorder.caller_audio(SILENT_FRAME * round((time.monotonic() - stopped) * 50))
        playback = self._call.playback
        if playback.playing:  # what Twilio still held for the old stream went with it
            playback.on_clear()
            if playback.on_idle is not None:
                await playback.on_idle()
        return True

    async def _push_dtmf(self, digit: str) -> None:
        try:
            entry = KeypadEntry(digit)
        except ValueError:
            logger.warning(f"call {shown(self._call.call_sid)}: ignoring unknown DTMF digit {shown(repr(digit), 20)}")
            return
        if self._call.on_key is not None:
            await self._call.on_key(digit)
        await self.push_frame(InputDTMFFrame(button=entry))
