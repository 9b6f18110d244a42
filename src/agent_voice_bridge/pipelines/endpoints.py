"""Which endpoint each AI stage of a chain will talk to, when it is not the provider's own.

An SDK endpoint variable in the environment (``ANTHROPIC_BASE_URL``…) silently sends every call's
audio or text somewhere else; ``check`` and ``serve`` say so, stage by stage, and say too when such a
variable is set but the stage does not read it (pipecat's OpenAI Realtime socket takes only ``base_url``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from agent_voice_bridge.pipelines.chain import Chain, masked
from agent_voice_bridge.pipelines.errors import where

SDK_ENDPOINTS: dict[str, tuple[str, str, bool]] = {
    "gemini.live": ("GOOGLE_GEMINI_BASE_URL", "https://generativelanguage.googleapis.com", True),
    "llm.anthropic": ("ANTHROPIC_BASE_URL", "https://api.anthropic.com", True),
    "llm.openai": ("OPENAI_BASE_URL", "https://api.openai.com/v1", True),
    "openai.realtime": ("OPENAI_BASE_URL", "wss://api.openai.com/v1/realtime", False),
}
"""Stage → (the SDK's endpoint variable, its default endpoint, whether the stage's client reads the variable)."""


def endpoint_notes(chain: Chain, env: Mapping[str, str] | None = None) -> list[str]:
    """One line per AI stage (fallback chain included) whose endpoint is set by ``base_url`` or by the
    environment: ``file:line: stage 6 (llm.anthropic): endpoint http://proxy:8080 (ANTHROPIC_BASE_URL)``."""
    env = os.environ if env is None else env
    notes: list[str] = []
    for stage in chain.stages:
        params = stage.param_dict()
        base_url = params.get("base_url")
        variable, default, reads_variable = SDK_ENDPOINTS.get(stage.name, ("", "", False))
        from_env = env.get(variable) if variable else None
        at = where(chain.source, stage.line, stage.position, stage.name)
        if base_url:
            notes.append(f"{at}: endpoint {masked({'url': base_url})['url']} (base_url)")
        elif from_env and reads_variable:
            notes.append(f"{at}: endpoint {masked({'url': from_env})['url']} ({variable})")
        elif from_env:
            notes.append(f"{at}: endpoint {default} ({variable} is set, but {stage.name} does not read it: "
                         "set base_url)")
    if chain.fallback is not None:
        notes += endpoint_notes(chain.fallback, env)
    return notes
