"""Short stage names → processor classes. A new stage is one new file and one line here.

Classes are imported on first use, so a chain pays only for the stages it names.
Anything written ``package.module:Class`` is looked up by import path instead.
"""

from __future__ import annotations

import importlib
from functools import cache

from pipecat.processors.frame_processor import FrameProcessor

from agent_voice_bridge.pipelines.errors import unknown_name

STAGES: dict[str, str] = {
    "twilio.input": "agent_voice_bridge.transports.twilio_input:TwilioInput",
    "twilio.output": "agent_voice_bridge.transports.twilio_output:TwilioOutput",
    "mulaw.decode": "agent_voice_bridge.processors.mulaw:MulawDecoder",
    "mulaw.encode": "agent_voice_bridge.processors.mulaw:MulawEncoder",
    "resample": "agent_voice_bridge.processors.resample:Resampler",
    "vad.interrupter": "agent_voice_bridge.processors.vad_interrupter:VADInterrupter",
    "keypad": "agent_voice_bridge.processors.keypad_collector:KeypadCollector",
    "echo": "agent_voice_bridge.processors.echo:EchoLine",
    "loopback": "agent_voice_bridge.processors.loopback:Loopback",
    "voicemail": "agent_voice_bridge.processors.voicemail:Voicemail",
    "thinking.filler": "agent_voice_bridge.processors.thinking_filler:ThinkingFiller",
    "gemini.live": "agent_voice_bridge.services.gemini_live:GeminiLive",
    "openai.realtime": "agent_voice_bridge.services.openai_realtime:OpenAIRealtime",
    "stt.whisper": "agent_voice_bridge.services.whisper_stt:WhisperSTT",
    "stt.deepgram": "agent_voice_bridge.services.deepgram_stt:DeepgramSTT",
    "llm.anthropic": "agent_voice_bridge.services.anthropic_llm:AnthropicLLM",
    "llm.openai": "agent_voice_bridge.services.openai_llm:OpenAILLM",
    "tts.piper": "agent_voice_bridge.services.piper_tts:PiperTTS",
    "tts.cartesia": "agent_voice_bridge.services.cartesia_tts:CartesiaTTS",
}

EXTRAS: dict[str, str] = {"stt.whisper": "local", "tts.piper": "local"}
"""Stages whose libraries come with an optional extra of this package."""


class UnknownStage(LookupError):
    pass


def is_import_path(name: str) -> bool:
    return ":" in name


@cache
def resolve(name: str) -> type:
    """The processor class for a stage name or a ``package.module:Class`` path."""
    target = STAGES.get(name)
    if target is None and not is_import_path(name):
        raise UnknownStage(unknown_name(name, STAGES, "stage", also="or a package.module:Class path"))
    module_name, _, attr = (target or name).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f" (pip install 'agent-voice-bridge[{EXTRAS[name]}]')" if name in EXTRAS else ""
        raise UnknownStage(f"cannot import {module_name!r}: {exc}{hint}") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise UnknownStage(f"module {module_name!r} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, FrameProcessor)):
        raise UnknownStage(f"{name!r} is not a pipecat FrameProcessor class")
    return cls
