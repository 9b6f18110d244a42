"""``KnownReply``: the AI of the turn-taking benchmark. Plays a known reply when the caller's turn ends.

A plain pipecat processor, so the same class answers on our chain (``bench/pipelines/turns*.yaml``,
after ``vad.interrupter``) and on pipecat's own (``bench/reference_server.py --line turns``, after
``UserTurnProcessor``): when a ``UserStoppedSpeakingFrame`` comes downstream it pushes
``TTSStartedFrame``, the next reply as 20 ms ``OutputAudioRawFrame``s (all at once, as a fast TTS would)
and ``TTSStoppedFrame``. The replies are espeak-ng sentences (a synthetic voice, unlike the caller's),
6–8 s each, at the caller's speech level; without espeak-ng, Asterisk prompts joined up.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from pipecat.frames.frames import (
    Frame,
    OutputAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from scipy import signal

REPLIES = (
    "Sure, I can help with that. Your order shipped on Tuesday and should arrive by Friday afternoon, "
    "and I can send the tracking number by text if you like.",
    "Thanks for waiting. I checked your account and there are two payments pending, one from last week "
    "and one from this morning, so the balance will update tonight.",
    "Okay, let me explain the options. You can keep the current plan, move to the annual plan and save a "
    "little, or pause the service for up to three months.",
)
CHUNK_SECS = 0.02


@cache
def reply_audio(index: int, rate: int) -> bytes:
    """Reply ``index`` (cycled) as PCM16 at ``rate``, active speech at -20 dBFS."""
    from bench import turn_corpus as corpus

    if corpus.have_espeak():
        x = corpus.espeak(REPLIES[index % len(REPLIES)], "en-us", 175)
    else:
        names = corpus.BABBLE[index % 3:] + corpus.BABBLE[:index % 3]
        x = np.concatenate([corpus.trim(corpus.prompt(n)) for n in names[:3]])
    x = corpus.at_level(x, corpus.SPEECH_DBFS)
    if rate != corpus.RATE:
        g = np.gcd(rate, corpus.RATE)
        x = signal.resample_poly(x, rate // g, corpus.RATE // g)
    return corpus.pcm16(x).tobytes()


class KnownReply(FrameProcessor):
    """Answers every end of the caller's turn with the next known reply; everything else passes on."""

    def __init__(self, *, sample_rate: int = 16000, **kwargs):
        super().__init__(**kwargs)
        self._rate = sample_rate
        self._replies = 0
        for i in range(len(REPLIES)):
            reply_audio(i, sample_rate)  # synthesised before the first call, not inside it

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, UserStoppedSpeakingFrame) and direction is FrameDirection.DOWNSTREAM:
            await self._reply()

    async def _reply(self) -> None:
        audio = reply_audio(self._replies, self._rate)
        self._replies += 1
        chunk = int(self._rate * CHUNK_SECS) * 2
        await self.push_frame(TTSStartedFrame())
        for i in range(0, len(audio), chunk):
            await self.push_frame(OutputAudioRawFrame(audio=audio[i:i + chunk], sample_rate=self._rate,
                                                      num_channels=1))
        await self.push_frame(TTSStoppedFrame())


def _stage_class() -> type:
    """``KnownReply`` as our chain's AI stage (the chain needs exactly one responder)."""
    from agent_voice_bridge.pipelines.formats import AudioFormat, Side, require
    from agent_voice_bridge.pipelines.stage import Stage, StageContext, StageParams

    class KnownReplyStage(Stage, KnownReply):
        Params = StageParams
        role = "responder"

        @classmethod
        def audio_out(cls, params: StageParams, audio_in: AudioFormat | None, side: Side) -> AudioFormat:
            return require(audio_in, encoding="pcm16")

        @classmethod
        def create(cls, params: StageParams, ctx: StageContext) -> KnownReplyStage:
            assert ctx.audio_in is not None
            return cls(sample_rate=ctx.audio_in.rate)

    return KnownReplyStage


KnownReplyStage = _stage_class()
