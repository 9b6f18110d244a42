"""``resample: {rate: N}``: change the sample rate of the PCM16 audio on its side of the chain.

A short polyphase filter (see :mod:`agent_voice_bridge.audio.resampler`) holds back
under 2 ms, where pipecat's high-quality soxr streams hold 64–150 ms: on a phone
line that is latency the caller hears. The filter's history belongs to the turn,
on the agent's side, so it is dropped on an interruption and the next reply starts clean.
The caller's side is one continuous stream that an interruption does not end: resetting it
would put a click into the very speech that caused the barge-in.
"""

from __future__ import annotations

from pipecat.frames.frames import Frame, InterruptionFrame
from pipecat.processors.frame_processor import FrameDirection
from pydantic import Field

from agent_voice_bridge.audio.resampler import PolyphaseResampler
from agent_voice_bridge.pipelines.formats import AudioFormat, Side, pcm16, require
from agent_voice_bridge.pipelines.stage import StageContext, StageParams
from agent_voice_bridge.processors.audio_frames import PCM_FRAME, replace_audio
from agent_voice_bridge.processors.audio_stage import AudioStage


class ResampleParams(StageParams):
    rate: int = Field(ge=8000, le=48000, description="Output sample rate in Hz.")


class Resampler(AudioStage):
    """Pushes the side's PCM frames at ``rate``; other frames pass untouched."""

    Params = ResampleParams

    def __init__(self, *, rate: int, side: Side = "caller", **kwargs):
        super().__init__(**kwargs)
        self._rate = rate
        self._takes = PCM_FRAME[side]
        self._resets_on_interruption = side == "agent"
        self._resamplers: dict[int, PolyphaseResampler] = {}

    @classmethod
    def audio_out(cls, params: ResampleParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        require(audio_in, encoding="pcm16")
        return pcm16(params.rate)

    @classmethod
    def create(cls, params: ResampleParams, ctx: StageContext) -> Resampler:
        return cls(rate=params.rate, side=ctx.side)

    def audio(self, frame: Frame) -> Frame:
        if isinstance(frame, self._takes) and frame.sample_rate != self._rate:
            return replace_audio(frame, self._resampler(frame.sample_rate).process(frame.audio), self._rate)
        return frame

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, InterruptionFrame):
            self.interrupted()
        await super().process_frame(frame, direction)

    def interrupted(self) -> None:
        if self._resets_on_interruption:
            for resampler in self._resamplers.values():
                resampler.reset()

    def _resampler(self, in_rate: int) -> PolyphaseResampler:
        resampler = self._resamplers.get(in_rate)
        if resampler is None:
            resampler = self._resamplers[in_rate] = PolyphaseResampler(in_rate, self._rate)
        return resampler
