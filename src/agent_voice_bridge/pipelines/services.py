"""What pipecat's service classes take and give, for stages written by import path.

A cascade is speech-to-text → LLM → text-to-speech: pipecat's ``STTService`` takes
PCM audio and gives text, an ``LLMService`` takes text and gives text, a
``TTSService`` takes text and gives PCM at its sample rate. Any subclass named as
``package.module:Class`` is checked by these rules, so a cascade in the wrong
order fails at ``voice-bridge check``; our short-named wrappers declare the same.
The LLM is the chain's AI stage (its responder): the builder puts pipecat's
context aggregators around it.
"""

from __future__ import annotations

from typing import Any, Literal

from pipecat.services.llm_service import LLMService
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService

from agent_voice_bridge.pipelines.formats import (
    CALL_AUDIO_RATE,
    TEXT,
    AudioFormat,
    FormatMismatch,
    pcm16,
    require,
)

Kind = Literal["stt", "llm", "tts"]


def kind_of(cls: type) -> Kind | None:
    """Which part of a cascade a pipecat class is, if any."""
    if issubclass(cls, STTService):
        return "stt"
    if issubclass(cls, LLMService):
        return "llm"
    if issubclass(cls, TTSService):
        return "tts"
    return None


def require_text(fmt: AudioFormat | None) -> AudioFormat:
    """Check that a stage receives text (from a speech-to-text stage or an LLM)."""
    if fmt is None or not fmt.is_text:
        got = f"receives {fmt}" if fmt is not None else "receives nothing"
        raise FormatMismatch(f"takes text but {got} (put a speech-to-text stage before it)")
    return fmt


def stt_out(audio_in: AudioFormat | None, rates: tuple[int, ...] | None = None) -> AudioFormat:
    require(audio_in, encoding="pcm16", rates=rates)
    return TEXT


def tts_out(audio_in: AudioFormat | None, rate: int | None) -> AudioFormat:
    require_text(audio_in)
    return pcm16(rate or CALL_AUDIO_RATE)


def service_audio_out(kind: Kind, params: dict[str, Any], audio_in: AudioFormat | None) -> AudioFormat:
    """The format a pipecat service named by import path gives for ``audio_in``."""
    if kind == "stt":
        rate = params.get("sample_rate")
        return stt_out(audio_in, (int(rate),) if rate else None)
    if kind == "llm":
        return require_text(audio_in)
    return tts_out(audio_in, params.get("sample_rate"))


def service_kwargs(kind: Kind | None, params: dict[str, Any], audio_in: AudioFormat | None) -> dict[str, Any]:
    """Keyword arguments for one call's instance: the rates the chain checked, unless given."""
    kwargs = dict(params)
    if kind == "stt":
        if audio_in is not None and not audio_in.is_text:
            kwargs.setdefault("sample_rate", audio_in.rate)
        kwargs.setdefault("audio_passthrough", False)  # the caller's audio ends here; the rest is words
    elif kind == "tts":
        kwargs.setdefault("sample_rate", CALL_AUDIO_RATE)
    return kwargs
