"""Re-wrapping audio frames without losing what pipecat attached to them."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame

from agent_voice_bridge.pipelines.formats import Side
from agent_voice_bridge.processors.frames import InputMulawAudioFrame, OutputMulawAudioFrame

F = TypeVar("F", bound=Frame)

PCM_FRAME: dict[Side, type[Frame]] = {"caller": InputAudioRawFrame, "agent": OutputAudioRawFrame}
MULAW_FRAME: dict[Side, type[Frame]] = {"caller": InputMulawAudioFrame, "agent": OutputMulawAudioFrame}
"""Which frames carry audio on each side of the AI stage."""


def carry_over(new: F, old: Frame) -> F:
    """Keep the fields pipecat sets outside ``__init__`` (interruptibility, timing, routing)."""
    new.interruptible = old.interruptible
    new.pts = old.pts
    new.metadata = old.metadata
    new.transport_source = old.transport_source
    new.transport_destination = old.transport_destination
    return new


def replace_audio(frame: F, audio: bytes, sample_rate: int) -> F:
    """The same kind of frame (a ``TTSAudioRawFrame`` stays one) holding other audio."""
    return carry_over(dataclasses.replace(frame, audio=audio, sample_rate=sample_rate), frame)
