"""``keypad``: the caller's key presses, collected into entries and told to the AI as a user message.

"Enter your account number, then press pound": each ``InputDTMFFrame`` from
``twilio.input`` passes on unchanged (custom stages further down still see every
key), and the stage collects the keys. The end key (``#``), a pause
(``pause_secs`` after the last key) or ``max_keys`` ends the entry; the stage then
pushes a :class:`~agent_voice_bridge.processors.frames.KeypadEntryFrame`, which
carries the keys and one user message ("The caller pressed 1 2 3 4 # on the phone
keypad."). Every AI stage answers it: Gemini Live and OpenAI Realtime put the
message into their session as a user turn and ask for a reply; a cascade's user
aggregator takes it as pipecat's ``LLMMessagesAppendFrame`` (which it is) and runs
the LLM.

Why a stage of its own rather than an option on each AI stage: the collecting
(timer, end key, length) is the same for every model and stays in one place; a
chain without it (voicemail, echo) hears keys as frames only, as before; and it
can sit anywhere between ``twilio.input`` and the AI stage. Audio takes the
:class:`AudioStage` fast path through it, untouched.
"""

from __future__ import annotations

import asyncio

from loguru import logger
from pipecat.frames.frames import CancelFrame, EndFrame, Frame, InputDTMFFrame
from pipecat.processors.frame_processor import FrameDirection
from pydantic import Field, field_validator

from agent_voice_bridge.pipelines.formats import AudioFormat, FormatMismatch, Side
from agent_voice_bridge.pipelines.stage import StageContext, StageParams
from agent_voice_bridge.processors.audio_stage import AudioStage
from agent_voice_bridge.processors.frames import KeypadEntryFrame
from agent_voice_bridge.transports.call_info import CallInfo

KEYS = "0123456789*#"


class KeypadParams(StageParams):
    end_key: str | None = Field(default="#", description="The key that ends an entry at once (one of 0-9 * #); "
                                "null: only a pause or max_keys does.")
    pause_secs: float = Field(default=2.0, gt=0, le=30, description="An entry ends this long after its last key.")
    max_keys: int | None = Field(default=None, ge=1, le=64,
                                 description="An entry ends at this many keys (a fixed-length code); null: no limit.")
    message: str = Field(default="The caller pressed {keys} on the phone keypad.",
                         description="The user message the AI gets; {keys} is the entry's keys, space-separated.")

    @field_validator("end_key")
    @classmethod
    def _one_key(cls, key: str | None) -> str | None:
        if key is not None and (len(key) != 1 or key not in KEYS):
            raise ValueError(f"end_key must be one of {' '.join(KEYS)} (or null), got {key!r}")
        return key

    @field_validator("message")
    @classmethod
    def _names_keys(cls, message: str) -> str:
        if "{keys}" not in message:
            raise ValueError("message must contain {keys}, where the pressed keys go")
        return message


class KeypadCollector(AudioStage):
    """Passes every frame on; pushes a ``KeypadEntryFrame`` downstream when an entry ends."""

    Params = KeypadParams

    def __init__(self, *, end_key: str | None = "#", pause_secs: float = 2.0, max_keys: int | None = None,
                 message: str = KeypadParams.model_fields["message"].default, call: CallInfo | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self._end_key = end_key
        self._pause_secs = pause_secs
        self._max_keys = max_keys
        self._message = message
        self._call = call
        self._keys = ""
        self._pause: asyncio.Task | None = None

    @classmethod
    def audio_out(cls, params: KeypadParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat | None:
        if side == "agent":
            raise FormatMismatch("it tells the AI the caller's keys, so it goes before the AI stage; here it "
                                 "would get the AI's audio")
        return audio_in

    @classmethod
    def create(cls, params: KeypadParams, ctx: StageContext) -> KeypadCollector:
        return cls(**params.model_dump(), call=ctx.call)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)  # pushes the frame on: the key reaches later stages first
        if isinstance(frame, InputDTMFFrame):
            await self._press(frame.button.value)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop_pause()  # the call is over: an unfinished entry has nobody to answer it

    async def cleanup(self):
        await super().cleanup()
        await self._stop_pause()

    async def _press(self, key: str) -> None:
        self._keys += key
        await self._stop_pause()
        if key == self._end_key or (self._max_keys is not None and len(self._keys) >= self._max_keys):
            await self._finish()
        else:
            self._pause = self.create_task(self._finish_after_pause(), name="keypad_pause")

    async def _finish_after_pause(self) -> None:
        await asyncio.sleep(self._pause_secs)
        self._pause = None
        await self._finish()

    async def _stop_pause(self) -> None:
        pause, self._pause = self._pause, None
        if pause is not None and pause is not asyncio.current_task():
            await self.cancel_task(pause)

    async def _finish(self) -> None:
        keys, self._keys = self._keys, ""
        if not keys:
            return
        spaced = " ".join(keys)
        logger.info(f"{self}: the caller entered {len(keys)} keys")  # not which: they may be a PIN
        if self._call is not None and self._call.journal is not None:
            self._call.journal.caller_said(f"(pressed {spaced})")
        text = self._message.replace("{keys}", spaced)
        await self.push_frame(KeypadEntryFrame(messages=[{"role": "user", "content": text}], run_llm=True, keys=keys))
