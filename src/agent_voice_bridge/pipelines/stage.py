"""What a stage is to the chain builder: a processor class plus a typed parameter model.

Our own stages subclass :class:`Stage` next to pipecat's ``FrameProcessor``. A class
named by import path that does not declare these hooks is still a stage: its YAML
parameters become keyword arguments and it is taken to pass audio through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from agent_voice_bridge.pipelines.formats import AudioFormat, Side

if TYPE_CHECKING:
    from agent_voice_bridge.transports.call_info import CallInfo

Role = Literal["source", "transform", "responder", "sink"]
"""source: Twilio in; responder: turns the caller's voice into the agent's; sink: Twilio out."""


class StageParams(BaseModel):
    """Base for stage parameter models: unknown keys are errors, so typos surface in ``check``."""

    model_config = ConfigDict(extra="forbid")


class NoParams(StageParams):
    pass


@dataclass
class StageContext:
    """What a stage knows about its place in one call's chain when it is built."""

    audio_in: AudioFormat | None
    side: Side
    call: CallInfo | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Stage:
    """Mixin for this project's stages: declares parameters, role and audio formats."""

    Params: ClassVar[type[StageParams]] = NoParams
    role: ClassVar[Role] = "transform"
    detects_speech: ClassVar[bool] = False
    """Pushes the VAD frames (``VADUserStarted/StoppedSpeakingFrame``) that a whole-utterance speech-to-text needs."""

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat | None:
        """The format this stage gives for ``audio_in``; raise FormatMismatch if it cannot take it."""
        return audio_in

    @classmethod
    def create(cls, params: StageParams, ctx: StageContext) -> Any:
        """Build the processor for one call."""
        return cls(**params.model_dump())

    @classmethod
    def warm_up(cls, params: StageParams) -> Any:
        """Called before the chain serves a call: load what every call will share (models), and return it
        (or None): the chain holds it as long as it lives, so a reload that drops the chain lets it go."""
        return None

    @classmethod
    def warnings(cls, params: StageParams) -> list[str]:
        """What ``check`` and ``serve`` should warn about in a valid configuration (a model near its shutdown)."""
        return []

    @classmethod
    def connect_early(cls, params: StageParams, call: CallInfo) -> None:
        """Called from ``/incoming`` (the call's facts, no stream yet): start connecting to a remote service."""
        return None
