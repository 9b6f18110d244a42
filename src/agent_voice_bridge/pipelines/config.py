"""The YAML file's schema: server, Twilio account, security and the pipeline chain."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "0.0.0.0"
    port: int = 8082
    public_url: str | None = Field(
        default=None,
        description="The https:// URL Twilio reaches this server at; the stream URL and signature checks use it.",
    )

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with https:// (or http:// for local testing)")
        return value.rstrip("/")


class TwilioConfig(_Section):
    account_sid: str = ""
    auth_token: str = Field(default="", description="Secret: never logged.")
    phone_number: str = ""


class RateLimit(_Section):
    calls: int = Field(gt=0)
    per_seconds: float = Field(gt=0)


class SecurityConfig(_Section):
    allowlist: list[str] = Field(default_factory=list, description="E.164 numbers allowed to call; empty = anyone.")
    rate_limit: RateLimit | None = None


class SeedAIConfig(BaseModel):
    """The seed project's ``ai:`` section, expanded to the default chain with that provider."""

    model_config = ConfigDict(extra="allow")
    provider: Literal["gemini", "openai", "echo"] = "gemini"
    gemini: dict[str, Any] = Field(default_factory=dict)
    openai: dict[str, Any] = Field(default_factory=dict)


StageEntry = str | dict[str, dict[str, Any] | None]


class BridgeConfig(_Section):
    """A whole pipeline file."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    twilio: TwilioConfig = Field(default_factory=TwilioConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    pipeline: list[StageEntry] = Field(default_factory=list, description="Stages run top to bottom for every call.")
    ai: SeedAIConfig | None = Field(default=None, description="Seed shape; expands to the default chain.")
