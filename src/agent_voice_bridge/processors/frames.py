"""Frames pipecat has no type for: μ-law audio, and a keypad entry for the AI.

pipecat's ``InputAudioRawFrame``/``OutputAudioRawFrame`` mean PCM16 to every
processor that sees them (VAD, services), so Twilio's μ-law travels in its own
frame types until ``mulaw.decode`` turns it into PCM. They mirror pipecat's split:
the caller's audio is a system frame (never dropped by an interruption), the
agent's audio a data frame (dropped from queues when the caller barges in).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.frames.frames import DataFrame, LLMMessagesAppendFrame, SystemFrame


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
