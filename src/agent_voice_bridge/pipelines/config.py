"""The YAML file's schema: server, Twilio account, security and the pipeline chain."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

SectionT = TypeVar("SectionT", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def e164_list(numbers: list[str]) -> list[str]:
    """Phone numbers as written in a file, normalised to E.164; any other spelling is refused, naming it."""
    from agent_voice_bridge.phone_numbers import e164

    wrong = [n for n in numbers if e164(str(n)) is None]
    if wrong:
        raise ValueError(f"not E.164 phone numbers: {', '.join(map(repr, wrong))} (write them as +15551234567)")
    return [e164(str(n)) or "" for n in numbers]


def overlay(server: BaseModel, line: BaseModel | None, model: type[SectionT]) -> SectionT:
    """``model``'s keys as a line sees them: the line's where it sets them, else the server's."""
    own = line.model_fields_set if line is not None else set()
    return model.model_construct(**{key: getattr(line if key in own else server, key) for key in model.model_fields})


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


class _LinePart(_Section):
    """The keys of a section that a line may set for itself; the server's section extends it with the rest.
    A server-wide key written under a line is refused, saying where it goes."""

    section: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _not_server_wide(cls, data: Any) -> Any:
        server = next(iter(cls.__subclasses__()), None)  # None: this is the server's section itself
        if server is not None and isinstance(data, dict):
            wide = [key for key in data if key in server.model_fields and key not in cls.model_fields]
            if wide:
                raise ValueError(f"{', '.join(wide)}: server-wide, set in the top-level {cls.section}: section "
                                 f"(a line sets {', '.join(cls.model_fields)})")
        return data


class LineSecurity(_LinePart):
    """The keys of ``security:`` about who may call and for how long: a line of a server file may set its own
    (``lines: {support: {security: {...}}}``); what it leaves out is the server's."""

    section: ClassVar[str] = "security"

    allowlist: list[str] = Field(default_factory=list, description="E.164 numbers allowed to call; empty = anyone.")
    blocklist: list[str] = Field(default_factory=list, description="E.164 numbers always rejected.")
    rate_limit: RateLimit | None = Field(default=None, description="Calls per caller per sliding window.")
    max_call_seconds: float = Field(default=3600.0, gt=0, description="A call is ended politely after this long.")

    @field_validator("allowlist", "blocklist")
    @classmethod
    def _phone_numbers(cls, numbers: list[str]) -> list[str]:
        return e164_list(numbers)


class SecurityConfig(LineSecurity):
    max_concurrent_calls: int | None = Field(default=None, gt=0, description="Live calls across all workers.")
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

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value in ("memory", "sqlite") or value.startswith(("sqlite:///", "redis://", "rediss://", "unix://")):
            return value
        raise ValueError("must be memory, sqlite, sqlite:///path or redis://host:port/db")


class LineStorage(_LinePart):
    """The keys of ``storage:`` about what is kept of a call: a line may set its own; the database is the server's."""

    section: ClassVar[str] = "storage"

    record: bool = Field(default=False, description="Record every call as a stereo WAV: the caller left, the "
                         "AI right exactly as the caller heard it.")
    recordings: str = Field(default="recordings", description="Directory the recordings (and voicemail "
                            "messages) are written to.")



class StorageConfig(LineStorage):
    url: str | None = Field(
        default="sqlite:///voice-bridge.db",
        description="Where call records and transcripts live: sqlite:///path (one host, the default) or "
        "postgresql://user:password@host/db (several hosts); empty: keep nothing.",
    )

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


class ObservabilityConfig(_Section):
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector (http://host:4318, or its /v1/traces URL): each call a trace, each turn a "
        "span with its latency segments. Unset: OTEL_EXPORTER_OTLP_ENDPOINT if set, else no traces.")
    service_name: str = Field(default="agent-voice-bridge", description="The traces' service.name.")
    phone_numbers: bool = Field(
        default=False, description="Put the caller's and callee's numbers on each call's span (personal data).")


class SeedAIConfig(BaseModel):
    """The seed project's ``ai:`` section, expanded to the default chain with that provider."""

    model_config = ConfigDict(extra="allow")
    provider: Literal["gemini", "openai", "echo"] = "gemini"
    gemini: dict[str, Any] = Field(default_factory=dict)
    openai: dict[str, Any] = Field(default_factory=dict)


StageEntry = str | dict[str, dict[str, Any] | None]

LINE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def _line_key(key: str) -> str:
    """``default``, a number called (E.164, normalised) or the name of a line written out."""
    from agent_voice_bridge.phone_numbers import e164

    if key == "default":
        return key
    if key[:1] in "+0123456789":
        number = e164(key)
        if number is None:
            raise ValueError(f"{key!r} is not an E.164 number (\"+15551234567\")")
        return number
    if not LINE_NAME.fullmatch(key):
        raise ValueError(f"{key!r} is neither an E.164 number (\"+15551234567\"), default, nor a line name "
                         "(letters, digits, _ and -)")
    return key


def _line_entry(value: Any) -> Any:
    """``"+15550100": pipelines/sales.yaml`` is short for ``{pipeline: pipelines/sales.yaml}``."""
    if isinstance(value, str):
        return {"pipeline": value}
    if value is None:
        raise ValueError("give the pipeline file, e.g. pipelines/sales.yaml")
    return value


class LineEntry(_Section):
    """One entry of ``lines:`` written out: its pipeline file and what it sets for its own calls."""

    pipeline: str = Field(min_length=1, description="The line's pipeline file, relative to the server file.")
    numbers: list[str] = Field(default_factory=list, description="A named line: the numbers (E.164) that reach "
                               "it. Under a number or default the key says which calls it takes.")
    security: LineSecurity | None = Field(default=None, description="This line's caller allowlist, blocklist, "
                                          "rate limit, call time limit; the rest is the server's security:.")
    storage: LineStorage | None = Field(default=None, description="Whether this line's calls are recorded, "
                                        "and where; the database is the server's storage.url.")

    @field_validator("numbers")
    @classmethod
    def _phone_numbers(cls, numbers: list[str]) -> list[str]:
        return e164_list(numbers)

    @field_validator("pipeline")
    @classmethod
    def _a_file(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("give the pipeline file, e.g. pipelines/sales.yaml")
        return value


LineKey = Annotated[str, AfterValidator(_line_key)]
LineValue = Annotated[LineEntry, BeforeValidator(_line_entry)]


class BridgeConfig(_Section):
    """A whole pipeline file."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    twilio: TwilioConfig = Field(default_factory=TwilioConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    outbound: OutboundConfig = Field(default_factory=OutboundConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    pipeline: list[StageEntry] = Field(default_factory=list, description="Stages run top to bottom for every call.")
    ai: SeedAIConfig | None = Field(default=None, description="Seed shape; expands to the default chain.")
    lines: dict[LineKey, LineValue] | None = Field(
        default=None,
        description="A server file instead of a pipeline: the number called (E.164, quoted) or 'default' → a "
        "pipeline file, relative to this file (numbers sharing a file share a line, named after the file); or "
        "a line name → {numbers, pipeline, security, storage}, a line with its own caller rules and recording.",
    )

    @field_validator("lines")
    @classmethod
    def _some_line(cls, lines: dict[str, LineEntry] | None) -> dict[str, LineEntry] | None:
        if lines is not None and not lines:
            raise ValueError("lists no line: map a number (or default) to a pipeline file")
        return lines

    @model_validator(mode="after")
    def _checks_need_a_token(self) -> BridgeConfig:
        if self.security.check_signatures and not self.twilio.auth_token:
            raise ValueError("security.check_signatures is on but twilio.auth_token is empty")
        if self.lines is not None and (self.pipeline or self.ai is not None):
            raise ValueError("a file has either lines: (a server file) or pipeline: (one line), not both")
        return self
