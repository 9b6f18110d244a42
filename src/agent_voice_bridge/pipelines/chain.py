"""Resolve and check a chain once, before any call needs it.

Each stage's parameters are validated against its model and the audio format is
walked from Twilio's μ-law through every stage; the first disagreement is reported
with the file, the YAML line and the stage's position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from loguru import logger
from pydantic import BaseModel, ValidationError

from agent_voice_bridge.log_values import shown
from agent_voice_bridge.pipelines.errors import ConfigError, where
from agent_voice_bridge.pipelines.fallback import load_fallback, names_fallback
from agent_voice_bridge.pipelines.formats import MULAW_8K, AudioFormat, FormatMismatch, Side
from agent_voice_bridge.pipelines.keywords import format_validation, init_keywords, typed_kwargs
from agent_voice_bridge.pipelines.loader import LoadedConfig
from agent_voice_bridge.pipelines.registry import UnknownStage, resolve
from agent_voice_bridge.pipelines.services import kind_of, service_audio_out
from agent_voice_bridge.pipelines.stage import Role, Stage
from agent_voice_bridge.transports.call_info import CallInfo

SECRET_WORDS = ("key", "token", "secret", "password")


@dataclass
class ResolvedStage:
    """One checked stage: its class, validated parameters and the audio on either side."""

    position: int
    name: str
    line: int | None
    cls: type
    params: BaseModel | dict[str, Any]
    role: Role
    side: Side
    audio_in: AudioFormat | None
    audio_out: AudioFormat | None

    def describe(self) -> str:
        fmt_in = str(self.audio_in) if self.audio_in else "—"
        fmt_out = str(self.audio_out) if self.audio_out else "—"
        shown = masked(self.param_dict())
        args = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"{self.position:>2}. {self.name:<18} {self.side:<6} {fmt_in:>14} → {fmt_out:<14} {args}"

    def param_dict(self) -> dict[str, Any]:
        return self.params.model_dump() if isinstance(self.params, BaseModel) else dict(self.params)


@dataclass
class Chain:
    """A checked chain: what the server builds a fresh pipeline from for every call."""

    source: str
    stages: list[ResolvedStage]
    fallback: Chain | None = None
    """Where a call goes when the AI stage fails (its ``fallback:``), checked with this chain."""
    held: list[Any] = field(default_factory=list, repr=False, compare=False)
    """What :meth:`warm_up` loaded for calls to share (models): held while this chain lives, no longer."""

    def describe(self) -> str:
        text = "\n".join(s.describe() for s in self.stages)
        if self.fallback is not None:
            text += f"\nfallback when the AI fails: {self.fallback.source}\n{self.fallback.describe()}"
        return text

    def warnings(self) -> list[str]:
        """Each stage's warnings, prefixed with file:line: stage N (name) like config errors."""
        found = [f"{where(self.source, s.line, s.position, s.name)}: {text}" for s in self.stages
                 if issubclass(s.cls, Stage) and isinstance(s.params, BaseModel) for text in s.cls.warnings(s.params)]
        return found + (self.fallback.warnings() if self.fallback is not None else [])

    def warm_up(self) -> None:
        """Load shared resources now, not in the first call (where it would stall every live call), and hold them."""
        self.held = [loaded for stage in self.stages
                     if issubclass(stage.cls, Stage) and isinstance(stage.params, BaseModel)
                     and (loaded := stage.cls.warm_up(stage.params)) is not None]
        if self.fallback is not None:
            self.fallback.warm_up()

    def memory_calls(self) -> int:
        """How many of a caller's earlier calls the stages want recalled (0: none)."""
        wanted = [getattr(getattr(stage.params, "memory", None), "calls", 0) for stage in self.stages]
        return max(wanted, default=0)

    def connect_early(self, call: CallInfo) -> None:
        """Let stages open their remote connections while Twilio sets up the stream.

        Only a head start: a stage that cannot begin is logged in one line and the call opens its own
        connection later, so the webhook that asked (``/incoming``, ``/phone/token``) still answers.
        """
        for stage in self.stages:
            if issubclass(stage.cls, Stage) and isinstance(stage.params, BaseModel):
                try:
                    stage.cls.connect_early(stage.params, call)
                except Exception as exc:
                    logger.warning(f"call {call.call_sid}: {stage.name} could not connect early "
                                   f"({exc.__class__.__name__}: {shown(exc)}); the call will connect itself")


def _unsegmented(path: str, stages: list[ResolvedStage]) -> list[str]:
    """A speech-to-text that transcribes whole utterances (Whisper) hears nothing without a VAD before it."""
    from pipecat.processors.audio.vad_processor import VADProcessor
    from pipecat.services.stt_service import SegmentedSTTService

    problems = []
    for i, stage in enumerate(stages):
        segmented = any(issubclass(s.cls, VADProcessor) or getattr(s.cls, "detects_speech", False) for s in stages[:i])
        if issubclass(stage.cls, SegmentedSTTService) and not segmented:
            problems.append(f"{where(path, stage.line, stage.position, stage.name)}: transcribes whole utterances, "
                            "so it needs vad.interrupter before it (to say where each one starts and ends)")
    return problems


def is_secret(name: str) -> bool:
    """``api_key``, ``auth_token``, ``apikey``: yes; ``max_tokens``: no."""
    return any(part.endswith(word) for part in name.lower().split("_") for word in SECRET_WORDS)


def masked(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` fit to show: secrets as ``***``, at any depth (``settings: {api_key: ...}``)."""
    return {k: "***" if is_secret(k) and v else _masked_value(v) for k, v in params.items()}


def _masked_value(value: Any) -> Any:
    if isinstance(value, dict):
        return masked(value)
    if isinstance(value, list):
        return [_masked_value(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return _masked_url(value)
    return value


def _masked_url(text: str) -> str:
    """A secret can sit in a value whatever its name: ``wss://user:pw@host/?key=sk-…`` shows ``***`` for both."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if parts.password:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    query = urlencode([(k, "***" if is_secret(k) or k.lower() in SECRET_QUERY_NAMES else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


SECRET_QUERY_NAMES = {"key", "sig", "signature", "auth", "access_token", "code"}


def _split_entry(entry: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        name, params = next(iter(entry.items()))
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise TypeError(f"parameters of {name!r} must be a mapping, got {type(params).__name__}")
        return str(name), params
    raise TypeError("each stage is a name, or a mapping with one key: the name, holding its parameters")


def _validate_params(cls: type, params: dict[str, Any]) -> BaseModel | dict[str, Any]:
    if issubclass(cls, Stage):
        return cls.Params.model_validate(params)
    unknown = [k for k in params if k not in init_keywords(cls)]
    if unknown:
        raise TypeError(f"{cls.__name__} takes no parameter {', '.join(map(repr, unknown))}")
    typed_kwargs(cls, params)  # a mapping for a settings object must build into one (each call builds its own)
    return dict(params)


def build_chain(loaded: LoadedConfig, fallbacks: bool = True) -> Chain:
    """Check every stage of ``loaded`` and return the chain, or raise ConfigError listing all problems.

    ``fallbacks``: also load and check the chain an AI stage's ``fallback:`` names."""
    path = loaded.path
    entries = loaded.config.pipeline
    if not entries:
        raise ConfigError([f"{path}: pipeline: is empty; list the stages from twilio.input to twilio.output"])
    problems: list[str] = []
    stages: list[ResolvedStage] = []
    fmt: AudioFormat | None = None
    side: Side = "caller"
    responders = 0
    mismatched = False
    for i, entry in enumerate(entries):
        position = i + 1
        line = loaded.stage_lines[i] if i < len(loaded.stage_lines) else None
        try:
            name, raw = _split_entry(entry)
        except TypeError as exc:
            problems.append(f"{where(path, line)}: stage {position}: {exc}")
            continue
        at = where(path, line, position, name)
        try:
            cls = resolve(name)
            params = _validate_params(cls, raw)
        except UnknownStage as exc:
            problems.append(f"{at}: {exc}")
            continue
        except ValidationError as exc:
            problems.append(f"{at}: {format_validation(exc, model=getattr(cls, 'Params', None))}")
            continue
        except TypeError as exc:
            problems.append(f"{at}: {exc}")
            continue
        kind = None if issubclass(cls, Stage) else kind_of(cls)  # a pipecat STT/LLM/TTS by import path
        role: Role = cls.role if issubclass(cls, Stage) else ("responder" if kind == "llm" else "transform")
        if i == 0 and role != "source":
            problems.append(f"{at}: the first stage must be twilio.input")
            fmt = MULAW_8K  # check the rest as if it were there
        if role == "source" and i != 0:
            problems.append(f"{at}: {name} must be the first stage")
        if role == "sink" and i != len(entries) - 1:
            problems.append(f"{at}: {name} must be the last stage")
        audio_in = fmt
        try:
            if issubclass(cls, Stage):
                fmt = cls.audio_out(params, fmt, side)
            elif kind is not None:
                fmt = service_audio_out(kind, params, fmt)
        except FormatMismatch as exc:
            prev = stages[-1] if stages else None
            origin = f" from stage {prev.position} ({prev.name})" if prev else ""
            if not (audio_in is None and mismatched):  # not the echo of a mismatch reported upstream
                problems.append(f"{at}: {exc}{origin}")
            mismatched = True
            fmt = None
        stage_side = side
        if role == "responder":
            responders += 1
            side = "agent"
        stages.append(ResolvedStage(position, name, line, cls, params, role, stage_side, audio_in, fmt))
    if not problems:
        if stages[-1].role != "sink":
            last = stages[-1]
            problems.append(f"{where(path, last.line, last.position, last.name)}: the last stage must be twilio.output")
        if responders != 1:
            problems.append(f"{path}: pipeline: needs exactly one AI stage (echo, loopback, gemini.live, "
                            f"openai.realtime, or an LLM such as llm.anthropic), found {responders}")
        problems.extend(_unsegmented(path, stages))
    fallback = _build_fallback(path, stages, problems) if fallbacks and not problems else None
    if problems:
        raise ConfigError(problems)
    return Chain(source=path, stages=stages, fallback=fallback)


def _build_fallback(path: str, stages: list[ResolvedStage], problems: list[str]) -> Chain | None:
    """The checked fallback chain of the (one) AI stage that names one; problems are appended, naming that stage."""
    for stage in stages:
        name = names_fallback(stage.params)
        if name is None:
            continue
        at = f"{where(path, stage.line, stage.position, stage.name)}: fallback {name!r}"
        try:
            chain = build_chain(load_fallback(name, path), fallbacks=False)
        except ConfigError as exc:
            problems.extend(f"{at}: {problem}" for problem in exc.problems)
            return None
        if any(names_fallback(s.params) for s in chain.stages):
            problems.append(f"{at}: {chain.source} names a fallback of its own; a fallback chain cannot")
            return None
        return chain
    return None
