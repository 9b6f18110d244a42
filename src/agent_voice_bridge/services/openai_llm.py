"""``llm.openai``: an OpenAI chat model as a cascade's LLM, through pipecat's ``OpenAILLMService``.

Any endpoint that speaks OpenAI's Chat Completions works through ``base_url``
(vLLM, Ollama, OpenRouter, a proxy).
"""

from __future__ import annotations

from pipecat.services.openai.llm import OpenAILLMService
from pydantic import Field

from agent_voice_bridge.pipelines.stage import StageContext
from agent_voice_bridge.services.cascade import (
    CascadeLLM,
    CascadeLLMParams,
    llm_settings,
)


class OpenAILLMParams(CascadeLLMParams):
    model: str | None = Field(default="gpt-4.1-mini", description="Chat model.")


class OpenAILLM(CascadeLLM, OpenAILLMService):
    """pipecat's ``OpenAILLMService`` configured from YAML for one call."""

    Params = OpenAILLMParams

    @classmethod
    def create(cls, params: OpenAILLMParams, ctx: StageContext) -> OpenAILLM:
        settings = llm_settings(params, ctx, "max_completion_tokens")
        service = cls(api_key=params.api_key, base_url=params.base_url, settings=cls.Settings(**settings))
        service.converse(params, ctx)
        return service
