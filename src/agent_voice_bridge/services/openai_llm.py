"""``llm.openai``: an OpenAI chat model as a cascade's LLM, through pipecat's ``OpenAILLMService``.

Any endpoint that speaks OpenAI's Chat Completions works through ``base_url``
(vLLM, Ollama, OpenRouter, a proxy).
"""

from __future__ import annotations

from typing import Any

from pipecat.services.openai.llm import OpenAILLMService
from pydantic import Field

from agent_voice_bridge.pipelines.stage import StageContext
from agent_voice_bridge.services.cascade import (
    CascadeLLM,
    CascadeLLMParams,
    system_instruction,
)


class OpenAILLMParams(CascadeLLMParams):
    model: str | None = Field(default="gpt-4.1-mini", description="Chat model.")


class OpenAILLM(CascadeLLM, OpenAILLMService):
    """pipecat's ``OpenAILLMService`` configured from YAML for one call."""

    Params = OpenAILLMParams

    @classmethod
    def create(cls, params: OpenAILLMParams, ctx: StageContext) -> OpenAILLM:
        settings: dict[str, Any] = {"system_instruction": system_instruction(params, ctx),
                                    "max_completion_tokens": params.max_tokens}
        if params.model:
            settings["model"] = params.model
        if params.temperature is not None:
            settings["temperature"] = params.temperature
        service = cls(api_key=params.api_key, base_url=params.base_url, settings=cls.Settings(**settings))
        service.converse(params, ctx)
        return service
