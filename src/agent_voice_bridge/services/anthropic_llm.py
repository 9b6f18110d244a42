"""``llm.anthropic``: Claude as a cascade's LLM, through pipecat's ``AnthropicLLMService``.

Takes the caller's words (a speech-to-text stage before it), gives Claude's reply
as streamed text for the text-to-speech stage after it. ``base_url`` points the
``anthropic`` SDK at another endpoint (a proxy, or the fake server in the tests).
"""

from __future__ import annotations

from anthropic import AsyncAnthropic
from pipecat.services.anthropic.llm import AnthropicLLMService
from pydantic import Field

from agent_voice_bridge.pipelines.stage import StageContext
from agent_voice_bridge.services.cascade import (
    CascadeLLM,
    CascadeLLMParams,
    llm_settings,
)


class AnthropicLLMParams(CascadeLLMParams):
    model: str | None = Field(default="claude-haiku-4-5",
                              description="Claude model (a fast one suits a phone call).")


class AnthropicLLM(CascadeLLM, AnthropicLLMService):
    """pipecat's ``AnthropicLLMService`` configured from YAML for one call."""

    Params = AnthropicLLMParams

    @classmethod
    def create(cls, params: AnthropicLLMParams, ctx: StageContext) -> AnthropicLLM:
        settings = llm_settings(params, ctx, "max_tokens")
        client = AsyncAnthropic(api_key=params.api_key, base_url=params.base_url)
        service = cls(api_key=params.api_key, client=client, settings=cls.Settings(**settings))
        service.converse(params, ctx)
        return service
