"""A plain pipecat processor (no Stage mixin) that counts the caller's audio it sees."""

from __future__ import annotations

from collections import Counter

from pipecat.frames.frames import Frame, InputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

SEEN: Counter[str] = Counter()


class CountingProcessor(FrameProcessor):
    def __init__(self, *, label: str, call=None, **kwargs):
        super().__init__(**kwargs)
        self._label = label
        self._caller = call.caller if call is not None else ""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            SEEN[f"{self._label}:{self._caller}:{frame.sample_rate}"] += 1
        await self.push_frame(frame, direction)
