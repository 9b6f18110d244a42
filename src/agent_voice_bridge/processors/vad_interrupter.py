"""``vad.interrupter``: Silero VAD that stops the agent when the caller talks over it.

pipecat's ``VADProcessor`` already turns audio into ``VADUserStartedSpeakingFrame``
/ ``VADUserStoppedSpeakingFrame``; this stage adds the barge-in rule: speech that
starts while the agent's audio is still playing to the caller (between the
output's ``BotStartedSpeakingFrame`` and ``BotStoppedSpeakingFrame``, which follow
Twilio's mark echoes, not our send times) broadcasts an interruption. Every stage
then drops what it holds for the old turn and ``twilio.output`` sends ``clear``.
"""

from __future__ import annotations

from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection
from pydantic import Field

from agent_voice_bridge.pipelines.formats import AudioFormat, Side, require
from agent_voice_bridge.pipelines.stage import Stage, StageContext, StageParams
from agent_voice_bridge.processors.silero import SharedSileroVADAnalyzer, shared_session


class VADInterrupterParams(StageParams):
    confidence: float = Field(default=0.7, gt=0, lt=1, description="Silero speech probability threshold.")
    start_secs: float = Field(default=0.2, ge=0.03, le=2, description="Speech needed before the caller counts as talking.")
    stop_secs: float = Field(default=0.6, ge=0.05, le=5, description="Silence that ends the caller's turn.")
    min_volume: float = Field(default=0.3, ge=0, le=1, description="Quieter audio is never speech (phone audio runs quieter than a desk microphone).")


class VADInterrupter(Stage, VADProcessor):
    """Pushes the VAD frames and ``UserStarted/StoppedSpeakingFrame`` both ways, and an ``InterruptionFrame`` on barge-in."""

    Params = VADInterrupterParams

    def __init__(self, *, sample_rate: int = 16000, confidence: float = 0.7, start_secs: float = 0.2,
                 stop_secs: float = 0.6, min_volume: float = 0.3, **kwargs):
        params = VADParams(confidence=confidence, start_secs=start_secs, stop_secs=stop_secs, min_volume=min_volume)
        super().__init__(vad_analyzer=SharedSileroVADAnalyzer(sample_rate=sample_rate, params=params), **kwargs)
        self._agent_audible = False
        self._vad_controller.add_event_handler("on_speech_started", self._on_speech_started)
        self._vad_controller.add_event_handler("on_speech_stopped", self._on_speech_stopped)

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        return require(audio_in, encoding="pcm16", rates=(8000, 16000))

    @classmethod
    def warm_up(cls, params: StageParams) -> None:
        shared_session()  # ~20 ms and ~10 MB once per process, before any call streams

    @classmethod
    def create(cls, params: VADInterrupterParams, ctx: StageContext) -> VADInterrupter:
        assert ctx.audio_in is not None
        return cls(sample_rate=ctx.audio_in.rate, **params.model_dump())

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if isinstance(frame, BotStartedSpeakingFrame):
            self._agent_audible = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._agent_audible = False
        await super().process_frame(frame, direction)

    async def _on_speech_started(self, _controller) -> None:
        # The chain has no turn aggregator, so the VAD's start is the caller's turn start
        # (services that do their own turn handling, e.g. Gemini's activityStart, listen for it).
        await self.broadcast_frame(UserStartedSpeakingFrame)
        if self._agent_audible:
            self._agent_audible = False
            await self.broadcast_interruption()

    async def _on_speech_stopped(self, _controller) -> None:
        await self.broadcast_frame(UserStoppedSpeakingFrame)
