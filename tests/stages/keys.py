"""A plain pipecat processor that records the keys it sees: what a user's own stage gets from the keypad."""

from __future__ import annotations

from pipecat.frames.frames import Frame, InputDTMFFrame, OutputDTMFFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

SEEN: list[str] = []


class KeySpy(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputDTMFFrame):
            SEEN.append(frame.button.value)
        await self.push_frame(frame, direction)


class PressOnPound(FrameProcessor):
    """Presses 9 on the line (pipecat's ``OutputDTMFFrame``) each time the caller presses #."""

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, InputDTMFFrame) and frame.button.value == "#":
            await self.push_frame(OutputDTMFFrame.from_string("9"))
