"""A plain pipecat processor that records the keys it sees: what a user's own stage gets from the keypad."""

from __future__ import annotations

from pipecat.frames.frames import Frame, InputDTMFFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

SEEN: list[str] = []


class KeySpy(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputDTMFFrame):
            SEEN.append(frame.button.value)
        await self.push_frame(frame, direction)
