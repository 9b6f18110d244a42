"""``loopback``: returns every frame of caller audio at once as the agent's audio.

A measuring device, not an AI: with it, whatever delay, gap or loss the caller
sees is the bridge's own. Its audio is marked not interruptible, so it never
counts as the agent speaking and a VAD in the chain never clears it.
"""

from __future__ import annotations

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame

from agent_voice_bridge.pipelines.formats import AudioFormat, Side, require
from agent_voice_bridge.processors.audio_stage import AudioStage
from agent_voice_bridge.processors.frames import InputMulawAudioFrame, OutputMulawAudioFrame


class Loopback(AudioStage):
    """Turns ``InputAudioRawFrame``/``InputMulawAudioFrame`` into their output twins; passes the rest."""

    role = "responder"

    @classmethod
    def audio_out(cls, params, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        return require(audio_in)

    def audio(self, frame: Frame) -> Frame:
        if isinstance(frame, InputAudioRawFrame):
            frame = OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate, num_channels=1)
            frame.interruptible = False
        elif isinstance(frame, InputMulawAudioFrame):
            frame = OutputMulawAudioFrame(audio=frame.audio, sample_rate=frame.sample_rate)
            frame.interruptible = False
        return frame
