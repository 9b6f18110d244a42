"""``tts.cartesia``: the agent's voice from Cartesia's streaming API, through pipecat's service.

Why Cartesia for a hosted text-to-speech: one WebSocket per call, first audio
in well under 200 ms, output at 8 kHz PCM directly (no resampling before
``mulaw.encode``), and word timestamps with the audio, so a barge-in keeps in
the model's memory only the words the caller heard. pipecat supports it as a
first-class service. Needs ``CARTESIA_API_KEY`` and a voice id.
"""

from __future__ import annotations

from pipecat.services.cartesia.tts import CartesiaTTSService
from pipecat.transcriptions.language import Language
from pydantic import Field

from agent_voice_bridge.pipelines.stage import StageContext
from agent_voice_bridge.services.cascade import CascadeTTS, TTSParams

DEFAULT_URL = "wss://api.cartesia.ai/tts/websocket"


class CartesiaParams(TTSParams):
    api_key: str = Field(min_length=1, description="Secret: never logged.")
    voice: str = Field(min_length=1, description="Cartesia voice id.")
    model: str = Field(default="sonic-3", description="Cartesia model.")
    language: str = Field(default="en", description="Language of the agent's speech.")
    url: str | None = Field(default=None, description="WebSocket endpoint override.")


class CartesiaTTS(CascadeTTS, CartesiaTTSService):
    """pipecat's ``CartesiaTTSService`` configured from YAML for one call."""

    Params = CartesiaParams

    @classmethod
    def create(cls, params: CartesiaParams, ctx: StageContext) -> CartesiaTTS:
        settings = cls.Settings(model=params.model, voice=params.voice, language=Language(params.language))
        return cls(api_key=params.api_key, url=params.url or DEFAULT_URL, settings=settings,
                   sample_rate=params.sample_rate)
