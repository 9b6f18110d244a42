"""What a cascade's stages share: speech-to-text → LLM → text-to-speech around pipecat's services.

The LLM stage is the chain's AI stage: it takes the same ``instructions``,
``greeting``, ``tools`` and ``end_call`` as the speech-to-speech stages (see
:mod:`agent_voice_bridge.services.backend`); the builder puts pipecat's context
aggregators around it (:mod:`agent_voice_bridge.processors.heard_context`). The
greeting is spoken by the TTS word for word (no model round trip before the
caller hears something) and goes into the model's context as its first turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pipecat.frames.frames import Frame, StartFrame, TTSSpeakFrame
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection
from pydantic import Field

from agent_voice_bridge.pipelines.formats import AudioFormat, Side
from agent_voice_bridge.pipelines.services import require_text, stt_out, tts_out
from agent_voice_bridge.pipelines.stage import Role, Stage, StageContext, StageParams
from agent_voice_bridge.services.backend import (
    AgentParams,
    instructions_for,
    opening_line,
    register_tools,
)


class CascadeLLMParams(AgentParams):
    """Keys every cascade LLM stage takes."""

    api_key: str = Field(min_length=1, description="Secret: never logged.")
    model: str | None = Field(default=None, description="Model name; the service's default when unset.")
    base_url: str | None = Field(default=None, description="Endpoint override (proxies, tests).")
    max_tokens: int = Field(default=1024, ge=16, le=64000, description="Longest reply, in tokens.")
    temperature: float | None = Field(default=None, ge=0, le=2, description="Sampling temperature.")


class CascadeLLM(Stage):
    """Mixin for a cascade's LLM stage (before pipecat's LLMService in the bases): text in, text out."""

    role: ClassVar[Role] = "responder"
    initial_context: LLMContext | None = None
    """The conversation the builder's aggregators share: tools declared, nothing said yet."""
    _greeting: str | None = None

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        return require_text(audio_in)

    def converse(self, params: AgentParams, ctx: StageContext) -> None:
        """Seed this call's conversation: tools, greeting, the tool handlers and ``end_call``."""
        schema = params.tools_schema(ctx.call)
        self.initial_context = LLMContext(tools=schema) if schema else LLMContext()
        self._greeting = opening_line(params, ctx)
        register_tools(self, params, ctx.call)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)  # type: ignore[misc]
        if isinstance(frame, StartFrame) and self._greeting:
            await self.push_frame(TTSSpeakFrame(self._greeting))  # type: ignore[attr-defined]


def llm_settings(params: CascadeLLMParams, ctx: StageContext, max_tokens_key: str) -> dict[str, Any]:
    """The service's settings from the YAML keys (each SDK names its token limit its own way)."""
    settings: dict[str, Any] = {"system_instruction": instructions_for(params, ctx), max_tokens_key: params.max_tokens}
    if params.model:
        settings["model"] = params.model
    if params.temperature is not None:
        settings["temperature"] = params.temperature
    return settings


class STTParams(StageParams):
    """Keys every speech-to-text stage takes."""

    language: str = Field(default="en", description="Language of the caller's speech (ISO 639-1 or BCP-47).")


class CascadeSTT(Stage):
    """Mixin for a speech-to-text stage: takes the chain's PCM (at ``rates``), gives text."""

    rates: ClassVar[tuple[int, ...] | None] = None

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        return stt_out(audio_in, cls.rates)


class TTSParams(StageParams):
    """Keys every text-to-speech stage takes."""

    sample_rate: int = Field(default=8000, ge=8000, le=48000,
                             description="Rate of the PCM it gives (8000: straight into mulaw.encode).")


class CascadeTTS(Stage):
    """Mixin for a text-to-speech stage: takes text, gives PCM at ``sample_rate``."""

    @classmethod
    def audio_out(cls, params: TTSParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        return tts_out(audio_in, params.sample_rate)


def packaged_file(path: str | None, fallback: Any, what: str, extra: str) -> str:
    """``path`` if given, else the file a model package ships (``fallback()``); checked to exist.

    Local models are never downloaded at run time: a missing file is an error at ``check``.
    """
    if not path:
        try:
            path = str(fallback())
        except ImportError:
            raise ValueError(f"no {what} given, and no package providing one is installed "
                             f"(pip install 'agent-voice-bridge[{extra}]', or set the path)") from None
    if not Path(path).exists():
        raise ValueError(f"{what} {path!r} does not exist (models are never downloaded at run time)")
    return path
