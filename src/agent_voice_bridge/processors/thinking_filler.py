"""``thinking.filler``: a soft sound while the AI is busy, so the caller never sits in dead air.

Placed after the AI stage (best just before ``twilio.output``, where the audio is Twilio's μ-law
as it is), it watches pipecat's frames going by: the caller's turn ending
(``VADUserStoppedSpeakingFrame``, ``UserStoppedSpeakingFrame`` or a model's own
``ProposedUserStoppedSpeakingFrame``, or a ``KeypadEntryFrame``) with no reply yet, or a tool running
(``FunctionCallInProgressFrame`` until its final ``FunctionCallResultFrame`` or a
``FunctionCallCancelFrame``), while nobody is audible (``BotStarted/StoppedSpeakingFrame`` from
``twilio.output``, which follow Twilio's mark echoes). When such a wait has lasted
``after_secs`` it plays its sound (built in, a file, or a line spoken offline), once or looped
with a gap, for ``max_secs`` at most.

The agent's first audio frame stops it at once and is never held back for it: the filler's
last frame is already on its way, a ``FillerStoppedFrame`` follows it, and ``twilio.output``
answers that with a ``clear`` when some filler may still be queued at Twilio, before it sends
the agent's audio. So the two are never mixed or interleaved. The caller starting to speak
stops it the same way. Filler audio carries ``FILLER`` in its metadata: ``twilio.output``
sends it without the agent's marks, so it never counts in what the caller heard of a
reply (the truncation of the model's memory on a barge-in, the transcript) and never makes
the agent "speaking" for the barge-in rule.
"""

from __future__ import annotations

import asyncio
import time
from functools import cache, partial
from pathlib import Path
from typing import Literal

from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    FunctionCallCancelFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pydantic import Field, field_validator, model_validator

from agent_voice_bridge.audio import mulaw, prompts
from agent_voice_bridge.audio.resampler import PolyphaseResampler
from agent_voice_bridge.pipelines.formats import AudioFormat, FormatMismatch, Side, require
from agent_voice_bridge.pipelines.stage import Stage, StageContext, StageParams
from agent_voice_bridge.processors.audio_stage import AudioSink, hand_on
from agent_voice_bridge.processors.frames import (
    CALLER_STARTED,
    CALLER_STOPPED,
    FILLER,
    FillerSentFrame,
    FillerStoppedFrame,
    KeypadEntryFrame,
    OutputMulawAudioFrame,
)

FRAME_MS = 20
MAX_SOUND_SECS = 30.0
MULAW_SUFFIXES = (".ulaw", ".mulaw", ".ul", ".raw")
AGENT_AUDIO = (OutputAudioRawFrame, OutputMulawAudioFrame)
Wait = Literal["tool", "reply"]


def load_sound(sound: str, text: str | None = None) -> bytes:
    """The filler as 8 kHz PCM16: ``text`` spoken, the built-in chime, a WAV (any rate), or raw 8 kHz μ-law.

    Raises ValueError saying what is wrong with the file."""
    if text is not None:
        return prompts.synthesize(text)
    if sound == "builtin":
        return prompts.thinking_sound()
    if Path(sound).suffix.lower() in MULAW_SUFFIXES:
        try:
            pcm = mulaw.decode(Path(sound).read_bytes())
        except OSError as exc:
            raise ValueError(f"{sound!r}: cannot read ({exc.strerror})") from None
        if not pcm:
            raise ValueError(f"{sound!r} holds no audio")
    else:
        pcm = prompts.load_wav(sound)
    if len(pcm) / 2 / prompts.RATE > MAX_SOUND_SECS:
        raise ValueError(f"{sound!r} is {len(pcm) / 2 / prompts.RATE:.0f} s long; a filler is at most "
                         f"{MAX_SOUND_SECS:.0f} s (it loops)")
    return pcm


@cache
def clip_frames(sound: str, encoding: str, rate: int, text: str | None = None) -> tuple[bytes, ...]:
    """The sound in the chain's format at the stage, cut into 20 ms frames (shared by every call)."""
    pcm = load_sound(sound, text)
    if encoding == "mulaw":
        audio, frame_bytes = mulaw.encode(pcm), prompts.RATE * FRAME_MS // 1000
    else:
        audio = pcm if rate == prompts.RATE else PolyphaseResampler(prompts.RATE, rate).process(pcm)
        frame_bytes = rate * FRAME_MS // 1000 * 2
    return tuple(audio[i:i + frame_bytes] for i in range(0, len(audio), frame_bytes))


class ThinkingFillerParams(StageParams):
    sound: str = Field(default="builtin", description="'builtin' (a soft two-note chime made by this project, "
                       "CC0), 'off', or a file: a WAV (8 kHz, other rates are resampled) or raw 8 kHz μ-law "
                       "(.ulaw), e.g. a short line like \"One moment please\".")
    text: str | None = Field(default=None, description="Instead of a sound: a short line spoken by the offline "
                             "synthesiser (espeak-ng or flite on PATH), e.g. 'One moment, please.'")
    after_secs: float = Field(default=1.2, ge=0.1, le=30, description="Silence before the filler starts: "
                              "a tool running, or the reply's first audio late after the caller's turn.")
    tool_after_secs: float | None = Field(default=None, ge=0.1, le=30, description="after_secs for tool calls.")
    reply_after_secs: float | None = Field(default=None, ge=0.1, le=30,
                                           description="after_secs for a late reply.")
    repeat: Literal["loop", "once"] = Field(default="loop", description="Play the sound once per wait, or "
                                            "again after each gap until the AI speaks or max_secs.")
    gap_secs: float = Field(default=1.0, ge=0, le=30, description="Silence between repetitions.")
    max_secs: float = Field(default=10.0, gt=0, le=300, description="Longest filler per wait; then silence "
                            "again until the AI speaks or the caller does.")

    @field_validator("sound", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        return "off" if value is False or value is None else value  # YAML reads a bare `off` as false

    @field_validator("sound")
    @classmethod
    def _usable(cls, sound: str) -> str:
        if sound != "off":
            load_sound(sound)
        return sound

    @model_validator(mode="after")
    def _one_source(self) -> ThinkingFillerParams:
        if self.text is not None:
            if "sound" in self.model_fields_set:
                raise ValueError("give sound or text, not both")
            if prompts.synthesizer() is None:
                raise ValueError("text needs an offline speech synthesiser, and neither espeak-ng nor flite is on "
                                 "PATH (apt-get install espeak-ng), or record the line and give it as sound")
        return self

    def clip(self, encoding: str, rate: int) -> tuple[bytes, ...]:
        """The filler at the stage's format; empty when it is off."""
        if self.sound == "off" and self.text is None:
            return ()
        return clip_frames(self.sound, encoding, rate, self.text)


class ThinkingFiller(Stage, AudioSink, FrameProcessor):
    """Pushes filler audio (``FILLER`` in its metadata) in the chain's format, then ``FillerSentFrame`` after
    each burst, and ``FillerStoppedFrame`` when it stops; every frame from upstream passes on untouched."""

    Params = ThinkingFillerParams

    def __init__(self, *, clip: tuple[bytes, ...] = (), make_frame=OutputMulawAudioFrame,
                 tool_after_secs: float = 1.2, reply_after_secs: float = 1.2, repeat: str = "loop",
                 gap_secs: float = 1.0, max_secs: float = 10.0, **kwargs):
        # Direct mode: the agent's audio passes without a queue hop, and our own pushes keep their order.
        super().__init__(enable_direct_mode=True, **kwargs)
        self._clip = clip
        self._make_frame = make_frame
        self._after: dict[Wait, float] = {"tool": tool_after_secs, "reply": reply_after_secs}
        self._repeat, self._gap_secs, self._max_secs = repeat, gap_secs, max_secs
        self._clip_secs = len(clip) * FRAME_MS / 1000
        self._caller_speaking = self._agent_audible = self._awaiting_reply = self._ended = False
        self._tools: set[str] = set()
        self._task: asyncio.Task | None = None
        self._due = 0.0  # when the task's filler starts (time.monotonic())
        self._playing = False  # the task is past its wait
        self._spent = False  # this wait's filler has played its maximum
        self._pushed = False  # filler audio went out since the last FillerStoppedFrame
        self._sending = asyncio.Lock()  # one filler frame in flight at most when the agent's audio arrives

    @classmethod
    def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
        if side != "agent":
            raise FormatMismatch("goes after the AI stage (it fills the AI's silences)")
        fmt = require(audio_in)
        if fmt.encoding == "mulaw":
            return require(fmt, rates=(prompts.RATE,))
        return require(fmt, encoding="pcm16")

    @classmethod
    def warm_up(cls, params: ThinkingFillerParams) -> None:
        if params.sound != "off" or params.text is not None:
            load_sound(params.sound, params.text)  # a line is synthesised once, at start, not in the first call

    @classmethod
    def create(cls, params: ThinkingFillerParams, ctx: StageContext) -> ThinkingFiller:
        assert ctx.audio_in is not None
        fmt = ctx.audio_in
        make = (OutputMulawAudioFrame if fmt.encoding == "mulaw"
                else partial(OutputAudioRawFrame, sample_rate=fmt.rate, num_channels=1))
        return cls(clip=params.clip(fmt.encoding, fmt.rate), make_frame=make, tool_after_secs=params.tool_after_secs or params.after_secs,
                   reply_after_secs=params.reply_after_secs or params.after_secs, repeat=params.repeat,
                   gap_secs=params.gap_secs, max_secs=params.max_secs)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, AGENT_AUDIO):
            await self.take_audio(frame)
            return
        await self._note(frame)
        await self.push_frame(frame, direction)

    async def take_audio(self, frame: Frame) -> None:
        """Audio going down: the agent's stops the filler before it goes on, at once (a model may pass the
        caller's audio on too: that changes nothing)."""
        if isinstance(frame, AGENT_AUDIO):
            self._awaiting_reply = False
            if frame.interruptible:
                self._agent_audible = True  # until twilio.output's BotStoppedSpeakingFrame
            if self._task is not None or self._pushed:
                await self._stop()
        await hand_on(self, frame)

    async def cleanup(self):
        self._ended = True
        task, self._task = self._task, None
        if task is not None:
            await self.cancel_task(task)
        await super().cleanup()

    async def _note(self, frame: Frame) -> None:
        """Follow the conversation's state; start or stop the filler when it changes."""
        if isinstance(frame, CALLER_STARTED):
            self._caller_speaking, self._awaiting_reply = True, False
        elif isinstance(frame, CALLER_STOPPED):
            self._caller_speaking, self._awaiting_reply = False, True
        elif isinstance(frame, KeypadEntryFrame):
            self._awaiting_reply = True  # keys the model answers, like a spoken turn
        elif isinstance(frame, FunctionCallInProgressFrame):
            self._tools.add(frame.tool_call_id)
        elif isinstance(frame, FunctionCallResultFrame):
            if frame.properties is None or frame.properties.is_final:
                self._tools.discard(frame.tool_call_id)
        elif isinstance(frame, FunctionCallCancelFrame):
            self._tools.discard(frame.tool_call_id)
        elif isinstance(frame, (BotStartedSpeakingFrame, BotStoppedSpeakingFrame)):
            self._agent_audible = isinstance(frame, BotStartedSpeakingFrame)
        elif isinstance(frame, InterruptionFrame):
            # The turn it waited on is over (the caller's next one will end), and nothing is left playing.
            self._awaiting_reply = self._agent_audible = False
        elif isinstance(frame, (EndFrame, CancelFrame)):
            self._ended = True
        else:
            return
        wait = self._waiting_for()
        if wait is None:
            self._spent = False
            await self._stop()
            return
        due = time.monotonic() + self._after[wait]
        if self._task is not None and not self._playing and due < self._due:
            await self._stop()  # a tool started during a longer wait for the reply: its threshold comes first
        if self._task is None and not self._spent and self._clip:
            self._due = due
            self._task = self.create_task(self._fill(wait), f"{self}::filler")

    def _waiting_for(self) -> Wait | None:
        """What the caller is waiting on in silence, if anything."""
        if self._caller_speaking or self._agent_audible or self._ended:
            return None
        if self._tools:
            return "tool"
        return "reply" if self._awaiting_reply else None

    async def _fill(self, wait: Wait) -> None:
        await asyncio.sleep(self._due - time.monotonic())
        self._playing = True
        logger.info(f"{self}: {'a tool is running' if wait == 'tool' else 'no reply yet'} after "
                    f"{self._after[wait]:g} s of silence: playing the thinking filler")
        began = time.monotonic()
        first = self._clip[:int(self._max_secs * 1000 / FRAME_MS)]  # a sound longer than max_secs is cut
        while await self._burst(first):
            # Twilio plays the burst at its own pace; the next one follows it after the gap, if it ends in time.
            if self._repeat == "once" or time.monotonic() - began + self._clip_secs + self._gap_secs > self._max_secs:
                break
            await asyncio.sleep(self._clip_secs + self._gap_secs)
        if self._task is asyncio.current_task():
            self._task, self._spent, self._playing = None, True, False

    async def _burst(self, clip: tuple[bytes, ...]) -> bool:
        """Push the sound once; False when the filler was stopped meanwhile."""
        for audio in clip:
            async with self._sending:
                if self._task is not asyncio.current_task():
                    return False
                self._pushed = True
                frame = self._make_frame(audio=audio)
                frame.metadata[FILLER] = True
                await hand_on(self, frame)
        async with self._sending:
            if self._task is not asyncio.current_task():
                return False
            await self.push_frame(FillerSentFrame())
        return True

    async def _stop(self) -> None:
        task, self._task, self._playing = self._task, None, False
        if self._pushed:
            async with self._sending:  # a filler frame on its way gets there first
                self._pushed = False
                await self.push_frame(FillerStoppedFrame())
        if task is not None and task is not asyncio.current_task():
            task.cancel()  # not awaited: the agent's audio waiting behind this goes on now (it can push no more)
