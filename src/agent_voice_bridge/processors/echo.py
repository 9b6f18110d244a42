"""``echo``: the offline AI. Plays the caller's last utterance back once they stop talking.

It needs ``vad.interrupter`` before it: the VAD frames mark where an utterance
starts and ends. The VAD confirms speech only after ``start_secs`` and silence only
after ``stop_secs``, so the echo keeps a short history to recover the onset and
trims the confirming silence from the end. Its reply is an ordinary interruptible
AI turn (``TTSStartedFrame``, audio, ``TTSStoppedFrame``): talking over it
interrupts it like talking over a model.
"""

from __future__ import annotations

from collections import deque

from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pydantic import Field

from agent_voice_bridge.pipelines.formats import AudioFormat, Side, require
from agent_voice_bridge.pipelines.stage import Stage, StageContext, StageParams

CHUNK_MS = 20
ONSET_MARGIN_SECS = 0.3
"""Audio kept before the VAD's confirmed start: Silero's confidence rises a few windows late."""
TAIL_KEEP_SECS = 0.1


class EchoParams(StageParams):
    max_seconds: float = Field(default=30.0, gt=0, le=300, description="Longest utterance played back.")


class EchoLine(Stage, FrameProcessor):
    """Consumes the caller's PCM; pushes ``TTSStartedFrame``, 20 ms ``OutputAudioRawFrame``s, ``TTSStoppedFrame``."""

    Params = EchoParams
    role = "responder"

    def __init__(self, *, max_seconds: float = 30.0, **kwargs):
        super().__init__(**kwargs)
        self._max_seconds = max_seconds
        self._history: deque[InputAudioRawFrame] = deque()
        self._history_secs = 0.0
        self._utterance: list[InputAudioRawFrame] | None = None
        self._utterance_secs = 0.0

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        return require(audio_in, encoding="pcm16")

    @classmethod
    def create(cls, params: EchoParams, ctx: StageContext) -> EchoLine:
        return cls(max_seconds=params.max_seconds)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._listen(frame)
        elif isinstance(frame, VADUserStartedSpeakingFrame):
            self._start_utterance(frame.start_secs)
            await self.push_frame(frame, direction)
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            await self.push_frame(frame, direction)
            await self._play_back(frame.stop_secs)
        else:
            await self.push_frame(frame, direction)

    def _listen(self, frame: InputAudioRawFrame) -> None:
        secs = frame.num_frames / frame.sample_rate
        self._history.append(frame)
        self._history_secs += secs
        while self._history_secs > 2.0 and len(self._history) > 1:
            self._history_secs -= self._history[0].num_frames / self._history[0].sample_rate
            self._history.popleft()
        if self._utterance is not None and self._utterance_secs < self._max_seconds:
            self._utterance.append(frame)
            self._utterance_secs += secs

    def _start_utterance(self, start_secs: float) -> None:
        keep, onset = [], start_secs + ONSET_MARGIN_SECS
        for frame in reversed(self._history):
            if onset <= 0:
                break
            keep.append(frame)
            onset -= frame.num_frames / frame.sample_rate
        self._utterance = keep[::-1]
        self._utterance_secs = sum(f.num_frames / f.sample_rate for f in keep)

    async def _play_back(self, stop_secs: float) -> None:
        frames, self._utterance = self._utterance, None
        if not frames:
            return
        rate = frames[0].sample_rate
        audio = b"".join(f.audio for f in frames)
        trim = int(max(stop_secs - TAIL_KEEP_SECS, 0.0) * rate) * 2
        audio = audio[: max(len(audio) - trim, 0)]
        chunk = rate * CHUNK_MS // 1000 * 2
        await self.push_frame(TTSStartedFrame())
        for i in range(0, len(audio), chunk):
            await self.push_frame(OutputAudioRawFrame(audio=audio[i : i + chunk], sample_rate=rate, num_channels=1))
        await self.push_frame(TTSStoppedFrame())
