"""``stt.deepgram``: the caller's words from Deepgram's streaming API, through pipecat's service.

Why Deepgram for a hosted speech-to-text: it streams over one WebSocket with
interim results (the transcript is ready a few hundred ms after the caller
stops, not after an upload), takes 8 or 16 kHz PCM as it comes, has models
tuned for phone audio, and is the speech-to-text pipecat's own examples and
tests lean on most. Needs ``DEEPGRAM_API_KEY``; no VAD is needed for it (use
``vad.interrupter`` anyway, for barge-in and the turns).
"""

from __future__ import annotations

from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.transcriptions.language import Language
from pydantic import Field

from agent_voice_bridge.pipelines.stage import StageContext
from agent_voice_bridge.services.cascade import CascadeSTT, STTParams


class DeepgramParams(STTParams):
    api_key: str = Field(min_length=1, description="Secret: never logged.")
    model: str = Field(default="nova-3", description="Deepgram model (nova-3, nova-2-phonecall, …).")
    base_url: str | None = Field(default=None, description="Endpoint override (proxies, self-hosted).")


class DeepgramSTT(CascadeSTT, DeepgramSTTService):
    """pipecat's ``DeepgramSTTService`` configured from YAML for one call."""

    Params = DeepgramParams
    rates = (8000, 16000)

    @classmethod
    def create(cls, params: DeepgramParams, ctx: StageContext) -> DeepgramSTT:
        settings = cls.Settings(model=params.model, language=Language(params.language), smart_format=True)
        return cls(api_key=params.api_key, base_url=params.base_url or "", settings=settings,
                   sample_rate=ctx.audio_in.rate if ctx.audio_in else None, audio_passthrough=False)
