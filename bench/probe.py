"""A pass-through stage that notes when the frames of a reply's path go by, for ``bench/cascade.py``.

Why: the reply's latency is the sum of the waits between stages (the VAD's stop,
the transcript, the turn's end, the LLM's first token, the TTS's first audio), and
only timestamps taken inside the server show which wait is which. Put one after
each cascade stage (``bench.probe:Probe: {path: ..., where: stt}``); each writes
one JSON line per noted frame, ``{"t": <time.monotonic()>, "where", "frame"}``, to
``path`` (appended; the monotonic clock is the caller's too on one machine).
Measurement only: never in a shipped chain.
"""

from __future__ import annotations

import json
import time

from pipecat.frames.frames import (
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserStoppedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

NOTED = (VADUserStoppedSpeakingFrame, UserStoppedSpeakingFrame, TranscriptionFrame, LLMFullResponseStartFrame,
         LLMTextFrame, LLMFullResponseEndFrame, TTSStartedFrame, TTSAudioRawFrame, TTSStoppedFrame,
         InterruptionFrame)


class Probe(FrameProcessor):
    """Passes every frame on; notes the downstream frames in ``NOTED`` (audio: the first of a run only)."""

    def __init__(self, *, path: str, where: str, **kwargs):
        super().__init__(**kwargs)
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - one line per frame, for the process's life
        self._where = where
        self._in_audio = False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and isinstance(frame, NOTED):
            audio = isinstance(frame, TTSAudioRawFrame)
            if not (audio and self._in_audio):
                self._file.write(json.dumps({"t": time.monotonic(), "where": self._where,
                                             "frame": type(frame).__name__}) + "\n")
            self._in_audio = audio or (self._in_audio and not isinstance(frame, (TTSStoppedFrame,
                                                                                 InterruptionFrame)))
        await self.push_frame(frame, direction)
