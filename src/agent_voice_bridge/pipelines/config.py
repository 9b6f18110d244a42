"""The YAML file's schema: server, Twilio account, security and the pipeline chain."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Section):
    cert: str = Field(description="PEM certificate (chain) file; the server then speaks https:// and wss://.")
    key: str = Field(description="PEM private key file of the certificate (keep it readable by the server only).")


class ServerConfig(_Section):
    host: str = "0.0.0.0"
    port: int = 8082
    public_url: str | None = Field(
        default=None,
        description="The https:// URL Twilio reaches this server at; the stream URL and signature checks use it.",
    )
    trust_proxy: bool = Field(
        default=False,
        description="Rebuild the signed URL from X-Forwarded-Proto/-Host (only behind a proxy you run).",
    )
    drain_seconds: float = Field(default=30.0, ge=0, description="On SIGTERM, how long live calls may go on.")
    max_body_bytes: int = Field(
        default=65536, gt=0,
        description="Largest HTTP request body; bigger ones get 413 before they are read (Twilio's webhooks are "
        "a few KiB).",
    )
    tls: TlsConfig | None = Field(
        default=None, description="Serve TLS directly (https://, wss://) with this certificate, without a proxy."
    )
    softphone: bool | None = Field(
        default=None,
        description="The browser softphone at /phone; default: on unless Twilio credentials are set.",
    )
    api_key: str | None = Field(
        default=None,
        description="Secret: the softphone (/phone) requires it when set, and always on a server with "
        "twilio.auth_token (X-API-Key header, Authorization: Bearer, or ?key=).",
    )
    max_connections: int | None = Field(
        default=1000, gt=0,
        description="Open sockets per server process (calls, webhooks, idle keep-alives) before new ones get "
        "503; null: no cap.",
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
    api_base_url: str | None = Field(default=None, description="Twilio REST API base URL (proxies, tests).")


class RateLimit(_Section):
    calls: int = Field(gt=0)
    per_seconds: float = Field(gt=0)


class SecurityConfig(_Section):
    allowlist: list[str] = Field(default_factory=list, description="E.164 numbers allowed to call; empty = anyone.")
    blocklist: list[str] = Field(default_factory=list, description="E.164 numbers always rejected.")
    rate_limit: RateLimit | None = Field(default=None, description="Calls per caller per sliding window.")
    max_concurrent_calls: int | None = Field(default=None, gt=0, description="Live calls across all workers.")
    max_call_seconds: float = Field(default=3600.0, gt=0, description="A call is ended politely after this long.")
    mode: Literal["auto", "production", "development"] = Field(
        default="auto",
        description="'production': Twilio signatures and stream tokens are checked (twilio.auth_token required). "
        "'development': checks off, said loudly at start and in /healthz; refused with an https:// public_url. "
        "'auto': production when twilio.auth_token is set; development otherwise, unless the file looks like "
        "production (https:// public_url, server.api_key), which is then an error.",
    )
    check_signatures: bool | None = Field(
        default=None,
        description="Twilio webhook signatures and per-call stream tokens; default: on when twilio.auth_token is set.",
    )
    check_ws_signature: bool = Field(
        default=False, description="Also require X-Twilio-Signature on the media-stream handshake."
    )
    stream_token_seconds: float = Field(default=60.0, gt=0, description="How long a stream token is valid.")
    store: str = Field(
        default="sqlite",
        description="Where limits live: 'memory' (one process), 'sqlite' or 'sqlite:///path' (one host), "
        "'redis://host:port/db' (many hosts).",
    )

    @field_validator("allowlist", "blocklist")
    @classmethod
    def _phone_numbers(cls, numbers: list[str]) -> list[str]:
        from agent_voice_bridge.phone_numbers import e164

        wrong = [n for n in numbers if e164(str(n)) is None]
        if wrong:
            raise ValueError(f"not E.164 phone numbers: {', '.join(map(repr, wrong))} (write them as +15551234567)")
        return [e164(str(n)) or "" for n in numbers]

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value in ("memory", "sqlite") or value.startswith(("sqlite:///", "redis://", "rediss://", "unix://")):
            return value
        raise ValueError("must be memory, sqlite, sqlite:///path or redis://host:port/db")


class StorageConfig(_Section):
    url: str | None = Field(
        default="sqlite:///voice-bridge.db",
        description="Where call records and transcripts live: sqlite:///path (one host, the default) or "
        "postgresql://user:password@host/db (several hosts); empty: keep nothing.",
    )
    record: bool = Field(default=False, description="Record every call as a stereo WAV: the caller left, the "
                         "AI right exactly as the caller heard it.")
    recordings: str = Field(default="recordings", description="Directory the recordings are written to.")

    @field_validator("url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if not value:
            return None
        if value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            return value
        raise ValueError("must be sqlite:///path or postgresql://user:password@host/db")  # never echo it


class MachineAnswer(_Section):
    say: str | None = Field(
        default="Hello, this is an automated call. We will try to reach you again later. Goodbye.",
        description="Message left after the beep when an answering machine picks up; empty: hang up.")


class OutboundConfig(_Section):
    machine_detection: bool = Field(default=True, description="Twilio's answering-machine detection "
                                    "(DetectMessageEnd): a machine gets on_machine, a person the AI.")
    on_machine: MachineAnswer = Field(default_factory=MachineAnswer)
    first_turn: Literal["wait_for_hello", "greet"] = Field(
        default="wait_for_hello",
        description="'wait_for_hello': the AI lets the callee speak first (their 'Hello?' never cuts off "
        "its opening line) and answers it; greets anyway after hello_timeout_secs of silence. 'greet': "
        "it opens at once, as on inbound calls.")
    hello_timeout_secs: float = Field(default=3.0, gt=0, le=30)


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
    storage: StorageConfig = Field(default_factory=StorageConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    pipeline: list[StageEntry] = Field(default_factory=list, description="Stages run top to bottom for every call.")
    ai: SeedAIConfig | None = Field(default=None, description="Seed shape; expands to the default chain.")
    lines: dict[str, str] | None = Field(
        default=None,
        description="A server file instead of a pipeline: the number called (E.164, quoted) or 'default' → a "
        "pipeline file, relative to this file. Numbers sharing a file share a line, named after the file.",
    )

    @field_validator("lines", mode="before")
    @classmethod
    def _line_numbers(cls, lines: Any) -> Any:
        if not isinstance(lines, dict):
            return lines
        from agent_voice_bridge.phone_numbers import e164

        checked: dict[str, Any] = {}
        for key, file in lines.items():
            if isinstance(key, int):  # YAML reads an unquoted +15550100 as the integer 15550100
                raise ValueError(f"{key}: quote the number, as in \"+{key}\": unquoted, YAML reads it as an integer")
            if key != "default" and e164(str(key)) is None:
                raise ValueError(f"{key!r} is neither an E.164 number (\"+15551234567\") nor default")
            if not isinstance(file, str) or not file.strip():
                raise ValueError(f"{key}: give the pipeline file, e.g. pipelines/sales.yaml")
            checked["default" if key == "default" else e164(str(key)) or ""] = file
        if not checked:
            raise ValueError("lists no line: map a number (or default) to a pipeline file")
        return checked

    @model_validator(mode="after")
    def _checks_need_a_token(self) -> BridgeConfig:
        if self.security.check_signatures and not self.twilio.auth_token:
            raise ValueError("security.check_signatures is on but twilio.auth_token is empty")
        if self.lines is not None and (self.pipeline or self.ai is not None):
            raise ValueError("a file has either lines: (a server file) or pipeline: (one line), not both")
        return self
