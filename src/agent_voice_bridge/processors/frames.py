"""Frames pipecat has no type for: μ-law audio, and a keypad entry for the AI.

pipecat's ``InputAudioRawFrame``/``OutputAudioRawFrame`` mean PCM16 to every
processor that sees them (VAD, services), so Twilio's μ-law travels in its own
frame types until ``mulaw.decode`` turns it into PCM. They mirror pipecat's split:
the caller's audio is a system frame (never dropped by an interruption), the
agent's audio a data frame (dropped from queues when the caller barges in).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipecat.frames.frames import (
    ControlFrame,
    DataFrame,
    LLMMessagesAppendFrame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    SystemFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)

CALLER_STARTED = (VADUserStartedSpeakingFrame, UserStartedSpeakingFrame, ProposedUserStartedSpeakingFrame)
"""The caller began to speak: our VAD's frames, or a model's own (OpenAI's server VAD proposes turns)."""
CALLER_STOPPED = (VADUserStoppedSpeakingFrame, UserStoppedSpeakingFrame, ProposedUserStoppedSpeakingFrame)
"""The caller's turn ended, by the same sources."""

FILLER = "agent_voice_bridge.filler"
"""``frame.metadata`` key of audio that fills a wait (``thinking.filler``): the caller hears it, but it is
not the agent's words, so ``twilio.output`` keeps it out of the segments whose heard share the model is told."""


@dataclass
class InputMulawAudioFrame(SystemFrame):
    """The caller's audio as Twilio sent it: 8 kHz μ-law bytes."""

    audio: bytes
    sample_rate: int = 8000


@dataclass
class OutputMulawAudioFrame(DataFrame):
    """The agent's audio ready for Twilio: 8 kHz μ-law bytes."""

    audio: bytes
    sample_rate: int = 8000


@dataclass
class KeypadEntryFrame(LLMMessagesAppendFrame):
    """Keys the caller pressed as one entry (``keypad``), with the user message that tells the model.

    An ``LLMMessagesAppendFrame`` (``run_llm=True``) so a cascade's user aggregator adds the
    message and runs the LLM as it would for any append; the speech-to-speech stages take
    this subclass themselves and send the message as a user turn.
    """

    keys: str = ""


@dataclass
class FillerSentFrame(ControlFrame):
    """The filler audio pushed so far is one burst: ``twilio.output`` follows it with a mark, whose echo says
    it has played out (after which nothing of it is left to clear)."""

    interruptible: bool = field(default=False, init=False)


@dataclass
class FillerStoppedFrame(ControlFrame):
    """The filler stopped (the agent's audio is next, or the caller spoke): ``twilio.output`` clears what of it
    Twilio may still hold, so none of it plays before or over what comes next."""

    interruptible: bool = field(default=False, init=False)
