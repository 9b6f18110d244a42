"""A stage for measurement only: marks every μ-law byte of the agent's audio with its chain's key.

``bench --only reloads`` (and ``tests/test_live_edits_load.py``) run a line whose chain is
``twilio.input → loopback → bench.watermark:Watermark {key: K} → twilio.output`` while its
files are edited: the caller hears every frame it sent, in order, with the four low
(mantissa) bits of each byte flipped by ``K``. So each frame a caller hears says which
configuration returned it, and the audio is still the caller's own speech (the flip moves
a sample by less than one μ-law step), so the load benchmark's latency alignment works on it.

:func:`keys_heard` reads the key back. ``encode(decode(b)) == b`` for every μ-law byte but
0x7F (negative zero, read back as 0xFF): the two differ only in the sign bit, which the
key never touches, so the key of every sample is exact.
"""

from __future__ import annotations

import numpy as np
from pipecat.frames.frames import Frame
from pydantic import Field

from agent_voice_bridge.audio import mulaw
from agent_voice_bridge.pipelines.formats import AudioFormat, Side, require
from agent_voice_bridge.pipelines.stage import StageParams
from agent_voice_bridge.processors.audio_stage import AudioStage
from agent_voice_bridge.processors.frames import OutputMulawAudioFrame

MANTISSA = 0x0F


class WatermarkParams(StageParams):
    key: int = Field(ge=1, le=MANTISSA, description="XORed into the low four bits of every μ-law byte sent.")


class Watermark(AudioStage):
    """Pushes each ``OutputMulawAudioFrame`` with every byte XOR ``key``; passes everything else."""

    Params = WatermarkParams

    def __init__(self, *, key: int, **kwargs):
        super().__init__(**kwargs)
        self._table = bytes(b ^ key for b in range(256))

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        return require(audio_in, encoding="mulaw")

    def audio(self, frame: Frame) -> Frame:
        if isinstance(frame, OutputMulawAudioFrame):
            frame.audio = frame.audio.translate(self._table)
        return frame


def keys_heard(sent: np.ndarray, heard: np.ndarray) -> np.ndarray:
    """Per sample, the key that turns what was sent into what was heard (int16 PCM, aligned, same length);
    anything but the low four bits differing (audio that is not the caller's own) reads as a key above 15."""
    wire_sent = np.frombuffer(mulaw.encode_array(sent), dtype=np.uint8)
    wire_heard = np.frombuffer(mulaw.encode_array(heard), dtype=np.uint8)
    return (wire_sent ^ wire_heard) & 0x7F
