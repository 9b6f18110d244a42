"""``mulaw.decode`` / ``mulaw.encode``: G.711 μ-law ↔ PCM16 at 8 kHz.

Each acts on the side of the chain it sits on: before the AI stage on the caller's
audio, after it on the agent's, so a decoder never touches audio it was not put
there for. The tables live in :mod:`agent_voice_bridge.audio.mulaw`.
"""

from __future__ import annotations

from pipecat.frames.frames import Frame

from agent_voice_bridge.audio import mulaw
from agent_voice_bridge.pipelines.formats import MULAW_8K, AudioFormat, Side, pcm16, require
from agent_voice_bridge.pipelines.stage import StageContext, StageParams
from agent_voice_bridge.processors.audio_frames import MULAW_FRAME, PCM_FRAME, carry_over
from agent_voice_bridge.processors.audio_stage import AudioStage


class MulawDecoder(AudioStage):
    """Pushes PCM16 8 kHz frames (``InputAudioRawFrame`` or ``OutputAudioRawFrame``) in place of μ-law ones."""

    def __init__(self, *, side: Side = "caller", **kwargs):
        super().__init__(**kwargs)
        self._takes = MULAW_FRAME[side]
        self._gives = PCM_FRAME[side]

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        require(audio_in, encoding="mulaw")
        return pcm16(MULAW_8K.rate)

    @classmethod
    def create(cls, params: StageParams, ctx: StageContext) -> MulawDecoder:
        return cls(side=ctx.side)

    def audio(self, frame: Frame) -> Frame:
        if type(frame) is self._takes:
            return carry_over(self._gives(audio=mulaw.decode(frame.audio), sample_rate=8000, num_channels=1), frame)
        return frame


class MulawEncoder(AudioStage):
    """Pushes ``OutputMulawAudioFrame`` (or the caller-side μ-law frame) in place of 8 kHz PCM16."""

    def __init__(self, *, side: Side = "agent", **kwargs):
        super().__init__(**kwargs)
        self._takes = PCM_FRAME[side]
        self._gives = MULAW_FRAME[side]

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        require(audio_in, encoding="pcm16", rates=(MULAW_8K.rate,))
        return MULAW_8K

    @classmethod
    def create(cls, params: StageParams, ctx: StageContext) -> MulawEncoder:
        return cls(side=ctx.side)

    def audio(self, frame: Frame) -> Frame:
        if isinstance(frame, self._takes) and frame.sample_rate == 8000:
            return carry_over(self._gives(audio=mulaw.encode(frame.audio)), frame)
        return frame
