"""Stages whose audio work is a plain function of one frame, and runs of them that skip pipecat's hops.

A pipecat hop (``push_frame`` → ``queue_frame`` → ``process_frame``) costs ~3–5 µs of
observer records, event-handler checks, clock reads and a trace message formatted for
every frame, even in direct mode; a call sends 50 frames a second each way through half
a dozen cheap stages (codec, resampler, VAD feed), so the hops cost more than the work.
An :class:`AudioStage` does its audio work in the synchronous :meth:`AudioStage.audio`.
When audio reaches the first stage of a run of adjacent ones, the run calls each stage's
``audio`` in chain order and hands the result on from the last stage: the same frames in
the same order. Every other frame (start, interruptions, text, upstream traffic) still
goes stage by stage through ``process_frame``.

The run's neighbours can skip their hop too (:func:`hand_on`): ``twilio.input`` calls
straight into a run that follows it, and a run calls straight into an
:class:`AudioSink` (``twilio.output``) that follows it. On the default chain a caller's
frame then takes one pipecat push, into the AI stage, and the model's audio one, out of
it; with ``loopback`` in the AI's place (the benchmark's chain) none at all.

What is given up: pipecat observers and ``on_*_push_frame``/``on_*_process_frame``
handlers do not see audio frames inside a run or handed on to or from one (the bridge
registers neither; a processor that is not an audio stage or sink between them gets
every frame the pipecat way). An exception in a run becomes an ``ErrorFrame`` from the
stage that handed the audio on, as in pipecat's own push.
"""

from __future__ import annotations

from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameCallback, FrameDirection, FrameProcessor

from agent_voice_bridge.pipelines.stage import Stage
from agent_voice_bridge.processors.frames import InputMulawAudioFrame, OutputMulawAudioFrame

AUDIO_FRAMES = (InputAudioRawFrame, OutputAudioRawFrame, InputMulawAudioFrame, OutputMulawAudioFrame)
"""The frames that may take the fast path; each stage's ``audio`` decides which of them it acts on."""


class AudioStage(Stage, FrameProcessor):
    """Base for cheap stages: override :meth:`audio`; ``process_frame`` sees only non-audio frames."""

    def __init__(self, **kwargs):
        # Direct mode: a stage this cheap is not worth an asyncio queue and task of its own.
        super().__init__(enable_direct_mode=True, **kwargs)
        self._run: tuple[AudioStage, ...] = ()

    def audio(self, frame: Frame) -> Frame:
        """This stage's work on one downstream audio frame; a frame it does not act on is returned as is."""
        return frame

    async def queue_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM,
                          callback: FrameCallback | None = None):
        if direction is FrameDirection.DOWNSTREAM and callback is None and isinstance(frame, AUDIO_FRAMES):
            await self.take_audio(frame)
            return
        await super().queue_frame(frame, direction, callback)

    async def take_audio(self, frame: Frame) -> None:
        """Run downstream audio through this stage and the audio stages after it, then hand it on."""
        run = self._run or self._find_run()
        if not run[-1]._cancelling:
            for stage in run:
                frame = stage.audio(frame)
            await hand_on(run[-1], frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, AUDIO_FRAMES):
            frame = self.audio(frame)  # audio that came the slow way (sent with a completion callback)
        await self.push_frame(frame, direction)

    def _find_run(self) -> tuple[AudioStage, ...]:
        """This stage and the audio stages right after it (the chain is linked before audio flows)."""
        run: list[AudioStage] = [self]
        while isinstance(run[-1]._next, AudioStage):
            run.append(run[-1]._next)
        self._run = tuple(run)
        return self._run


class AudioSink:
    """A processor that can take downstream audio by a plain call (``twilio.output``), not only by a push."""

    async def take_audio(self, frame: Frame) -> None:
        raise NotImplementedError


async def hand_on(source: FrameProcessor, frame: Frame) -> None:
    """Pass downstream audio from ``source`` to the next processor.

    A call when the next one is an audio stage or an audio sink, else pipecat's
    ``push_frame``. As in pipecat's push, an exception on the way becomes an
    ``ErrorFrame`` from ``source`` instead of ending the task that read the audio.
    """
    receiver = source._next
    if not isinstance(receiver, (AudioStage, AudioSink)) or not isinstance(frame, AUDIO_FRAMES):
        await source.push_frame(frame, FrameDirection.DOWNSTREAM)
        return
    try:
        await receiver.take_audio(frame)
    except Exception as exc:
        await source.push_error(error_msg=f"Uncaught exception: {exc}", exception=exc)
