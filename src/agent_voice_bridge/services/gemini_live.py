"""``gemini.live``: Google's Gemini Live speech-to-speech model, through pipecat's service.

Takes 16 kHz PCM (the chain's resampler feeds it), gives 24 kHz PCM. pipecat's
service ignores the caller's audio until it has a conversation context (normally
from a context aggregator this chain does not have), so the stage seeds one at
start: empty, or holding the greeting request when the AI should speak first.
"""

from __future__ import annotations

from typing import Any

from google.genai.types import HttpOptions
from pipecat.frames.frames import Frame, StartFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.google.gemini_live.llm import (
    MAX_CONSECUTIVE_FAILURES,
    GeminiLiveLLMService,
    GeminiVADParams,
)
from pydantic import Field

from agent_voice_bridge.pipelines.formats import AudioFormat, Side, pcm16, require
from agent_voice_bridge.pipelines.stage import Stage, StageContext
from agent_voice_bridge.services.backend import (
    BackendWatch,
    RealtimeParams,
    greeting_prompt,
    register_tools,
    rendered,
    ssl_context,
)

INPUT_RATE = 16000
OUTPUT_RATE = 24000


class GeminiLiveParams(RealtimeParams):
    voice: str | None = Field(default="Puck", description="Prebuilt voice (Puck, Charon, Kore, Fenrir, Aoede…).")
    api_version: str | None = Field(default=None, description="API version in the endpoint path (v1beta, v1alpha).")


class GeminiLive(Stage, BackendWatch, GeminiLiveLLMService):
    """pipecat's ``GeminiLiveLLMService`` configured from YAML for one call."""

    Params = GeminiLiveParams
    role = "responder"

    def __init__(self, *, greeting: str | None = None, **kwargs: Any):
        super().__init__(inference_on_context_initialization=bool(greeting), **kwargs)
        self._greeting = greeting

    @classmethod
    def audio_out(cls, params: GeminiLiveParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        require(audio_in, encoding="pcm16", rates=(INPUT_RATE,))
        return pcm16(OUTPUT_RATE)

    @classmethod
    def create(cls, params: GeminiLiveParams, ctx: StageContext) -> GeminiLive:
        # Compression lifts the ~15 min audio-session limit; connection resets (goAway, ~10 min) are
        # resumed by pipecat with the session-resumption handle.
        settings = cls.Settings(language=params.language, context_window_compression={"enabled": True})
        if params.model:
            settings.model = params.model if params.model.startswith("models/") else f"models/{params.model}"
        if params.voice:
            settings.voice = params.voice
        if params.turn_detection == "local":
            settings.vad = GeminiVADParams(disabled=True)
        http: dict[str, Any] = {}
        if params.base_url:
            http["base_url"] = params.base_url.rstrip("/")
        if params.api_version:
            http["api_version"] = params.api_version
        context = ssl_context(params.ca_file)
        if context is not None:
            http["async_client_args"] = {"ssl": context}
        service = cls(
            api_key=params.api_key,
            system_instruction=rendered(params.instructions, ctx),
            settings=settings,
            tools=params.tools_schema(),
            http_options=HttpOptions(**http) if http else None,
            greeting=rendered(params.greeting, ctx),
        )
        register_tools(service, params, ctx.call)
        return service

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            messages = [{"role": "user", "content": greeting_prompt(self._greeting)}] if self._greeting else []
            await self._handle_context(LLMContext(messages=messages))

    async def _connection_task_handler(self, config):
        # pipecat retries a dropped session with its resumption handle; what reaches here is a session
        # that could not be opened at all, or one it gave up on.
        try:
            await super()._connection_task_handler(config)
        except Exception as exc:
            if not self._disconnecting:
                await self.backend_lost(f"session failed: {exc}")
            return
        if not self._disconnecting and self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            await self.backend_lost("session closed and could not be resumed")
