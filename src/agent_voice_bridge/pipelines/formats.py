"""What a link between two stages carries, and which side of the call it belongs to.

Like caps in GStreamer: every stage says what it takes and gives, so a chain that
feeds μ-law to a stage wanting 16 kHz PCM is refused by ``voice-bridge check``
instead of producing noise in the middle of a call. A cascade (speech-to-text →
LLM → text-to-speech) carries text between its stages: :data:`TEXT`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Encoding = Literal["mulaw", "pcm16", "text"]
Side = Literal["caller", "agent"]
"""Before the AI stage the chain carries the caller's voice; after it, the agent's."""


@dataclass(frozen=True)
class AudioFormat:
    """Encoding and sample rate of mono audio on one link of the chain."""

    encoding: Encoding
    rate: int

    def __str__(self) -> str:
        if self.encoding == "text":
            return "text"
        return f"{self.rate / 1000:g} kHz {_NAMES[self.encoding]}"

    @property
    def is_text(self) -> bool:
        return self.encoding == "text"


_NAMES = {"mulaw": "μ-law", "pcm16": "PCM16", "text": "text"}
MULAW_8K = AudioFormat("mulaw", 8000)
"""What Twilio sends and plays."""
TEXT = AudioFormat("text", 0)
"""Words, not audio: what a speech-to-text stage gives, an LLM takes and gives, a text-to-speech stage takes."""
CALL_AUDIO_RATE = 8000
"""The pipeline's audio rate (pipecat's ``audio_in/out_sample_rate`` for every call): what a service
that is not told its rate assumes."""


class FormatMismatch(ValueError):
    """A stage cannot take the audio its upstream neighbour gives; the message says what it wanted."""


def pcm16(rate: int) -> AudioFormat:
    return AudioFormat("pcm16", rate)


def require(fmt: AudioFormat | None, *, encoding: Encoding | None = None,
            rates: tuple[int, ...] | None = None) -> AudioFormat:
    """Check a stage's input, raising :class:`FormatMismatch` with what was wanted."""
    if fmt is None:
        raise FormatMismatch("receives no audio (is twilio.input first?)")
    if encoding and fmt.encoding != encoding:
        raise FormatMismatch(f"takes {_NAMES[encoding]} but receives {fmt}")
    if rates and fmt.rate not in rates:
        wanted = " or ".join(f"{r / 1000:g} kHz" for r in rates)
        raise FormatMismatch(f"takes {wanted} but receives {fmt}")
    return fmt
