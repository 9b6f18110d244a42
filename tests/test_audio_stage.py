"""Runs of audio stages: the same frames, in the same order, as stage by stage; other frames take every hop."""

from __future__ import annotations

import numpy as np
from pipecat.frames.frames import ErrorFrame, Frame, InputAudioRawFrame, OutputAudioRawFrame, TextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import run_test

from agent_voice_bridge.audio import mulaw
from agent_voice_bridge.audio.resampler import PolyphaseResampler
from agent_voice_bridge.processors.audio_stage import AudioSink, hand_on
from agent_voice_bridge.processors.frames import InputMulawAudioFrame, OutputMulawAudioFrame
from agent_voice_bridge.processors.loopback import Loopback
from agent_voice_bridge.processors.mulaw import MulawDecoder, MulawEncoder
from agent_voice_bridge.processors.resample import Resampler


class Counting(FrameProcessor):
    """A plain pipecat processor: it sees every frame that reaches it, and counts the audio."""

    def __init__(self):
        super().__init__()
        self.audio_seen = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, (InputAudioRawFrame, OutputAudioRawFrame)):
            self.audio_seen += 1
        await self.push_frame(frame, direction)


def _caller_frames(n: int = 20) -> list[Frame]:
    rng = np.random.default_rng(7)
    pcm = (rng.standard_normal(160 * n) * 3000).astype(np.int16)
    frames: list[Frame] = []
    for i in range(n):
        frames.append(InputMulawAudioFrame(audio=mulaw.encode(pcm[160 * i:160 * (i + 1)].tobytes())))
        if i % 5 == 0:
            frames.append(TextFrame(text=f"t{i}"))  # non-audio frames interleaved: order must hold
    return frames


def _chain() -> list[FrameProcessor]:
    """decode → 16 kHz → loopback → 8 kHz → encode: one run of audio stages."""
    return [MulawDecoder(side="caller"), Resampler(rate=16000, side="caller"), Loopback(),
            Resampler(rate=8000, side="agent"), MulawEncoder(side="agent")]


def _expected_audio(frames: list[Frame]) -> bytes:
    """What decode → 16 kHz → loopback → 8 kHz → encode gives, computed without any processor."""
    up, down = PolyphaseResampler(8000, 16000), PolyphaseResampler(16000, 8000)
    out = b""
    for f in frames:
        if isinstance(f, InputMulawAudioFrame):
            out += mulaw.encode(down.process(up.process(mulaw.decode(f.audio))))
    return out


async def test_a_run_gives_what_the_stages_give_one_by_one_in_order():
    frames = _caller_frames()
    counter = Counting()
    chain = Pipeline([*_chain(), counter])
    down, _ = await run_test(chain, frames_to_send=frames)
    kinds = [type(f) for f in down]
    expected = [OutputMulawAudioFrame if isinstance(f, InputMulawAudioFrame) else TextFrame for f in frames]
    assert kinds == expected, "one frame out per frame in, same order, text between the same audio frames"
    assert b"".join(f.audio for f in down if isinstance(f, OutputMulawAudioFrame)) == _expected_audio(frames)
    assert all(not f.interruptible for f in down if isinstance(f, OutputMulawAudioFrame)), "loopback audio"
    assert counter.audio_seen == 0, "μ-law leaves the run; no PCM reaches the stage after it"


async def test_a_plain_processor_between_audio_stages_sees_every_audio_frame():
    frames = _caller_frames(10)
    counter = Counting()
    chain = Pipeline([MulawDecoder(side="caller"), counter, Resampler(rate=16000, side="caller"), Loopback(),
                      Resampler(rate=8000, side="agent"), MulawEncoder(side="agent")])
    down, _ = await run_test(chain, frames_to_send=frames)
    assert counter.audio_seen == 10, "the run stops before a stage that is not an audio stage"
    assert b"".join(f.audio for f in down if isinstance(f, OutputMulawAudioFrame)) == _expected_audio(frames)


async def test_upstream_audio_is_not_taken_by_a_run():
    frame = InputAudioRawFrame(audio=bytes(320), sample_rate=8000, num_channels=1)
    _, up = await run_test(Pipeline([MulawDecoder(side="caller"), Resampler(rate=16000, side="caller")]),
                           frames_to_send=[frame], frames_to_send_direction=FrameDirection.UPSTREAM)
    assert [type(f) for f in up] == [InputAudioRawFrame] and up[0].sample_rate == 8000, "upstream passes untouched"


async def test_audio_sent_the_slow_way_is_still_transformed():
    """A frame queued with a completion callback skips the run but not the stage's audio work."""
    decoder = MulawDecoder(side="caller")
    seen: list[Frame] = []

    class Catch(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection):
            await super().process_frame(frame, direction)
            seen.append(frame)
            await self.push_frame(frame, direction)

    done: list[Frame] = []

    async def callback(_processor, frame: Frame, _direction) -> None:
        done.append(frame)

    class SendWithCallback(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection):
            await super().process_frame(frame, direction)
            if isinstance(frame, TextFrame) and frame.text == "go":
                mulaw_frame = InputMulawAudioFrame(audio=mulaw.encode(np.full(160, 1000, np.int16).tobytes()))
                await decoder.queue_frame(mulaw_frame, FrameDirection.DOWNSTREAM, callback)
            else:
                await self.push_frame(frame, direction)

    await run_test(Pipeline([SendWithCallback(), decoder, Catch()]), frames_to_send=[TextFrame(text="go")])
    audio = [f for f in seen if isinstance(f, InputAudioRawFrame)]
    assert len(audio) == 1 and len(done) == 1, (seen, done)
    assert np.abs(np.frombuffer(audio[0].audio, np.int16) - 1000).max() < 40, "decoded μ-law, not passed through"


class HandingOn(FrameProcessor):
    """A source like ``twilio.input``: audio goes on with :func:`hand_on`, everything else by push."""

    def __init__(self):
        super().__init__(enable_direct_mode=True)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, InputMulawAudioFrame):
            await hand_on(self, frame)
        else:
            await self.push_frame(frame, direction)


class Sink(AudioSink, FrameProcessor):
    """A sink like ``twilio.output``: records what it takes by call and what reaches it by push, in one list."""

    def __init__(self):
        super().__init__(enable_direct_mode=True)
        self.got: list[tuple[str, Frame]] = []

    async def take_audio(self, frame: Frame) -> None:
        self.got.append(("call", frame))

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if direction is FrameDirection.DOWNSTREAM and isinstance(frame, (OutputMulawAudioFrame, TextFrame)):
            self.got.append(("push", frame))
        await self.push_frame(frame, direction)


async def test_audio_goes_from_source_through_run_into_sink_by_calls_in_order():
    frames = _caller_frames()
    pushed: list[Frame] = []
    source, sink = HandingOn(), Sink()
    stages = _chain()
    for stage in (source, *stages):
        stage.add_event_handler("on_before_push_frame", lambda _p, frame: pushed.append(frame))
    await run_test(Pipeline([source, *stages, sink]), frames_to_send=frames)
    expected = [("call", OutputMulawAudioFrame) if isinstance(f, InputMulawAudioFrame) else ("push", TextFrame)
                for f in frames]
    assert [(how, type(f)) for how, f in sink.got] == expected, "audio by call, text by push, in the order sent"
    assert b"".join(f.audio for how, f in sink.got if how == "call") == _expected_audio(frames)
    assert not any(isinstance(f, (InputMulawAudioFrame, OutputMulawAudioFrame)) for f in pushed), \
        "no pipecat push for audio from the source to the sink"


async def test_a_plain_processor_after_the_run_gets_audio_by_push():
    frames = _caller_frames(10)
    counter, sink = Counting(), Sink()
    await run_test(Pipeline([HandingOn(), *_chain(), counter, sink]), frames_to_send=frames)
    assert [how for how, f in sink.got if isinstance(f, OutputMulawAudioFrame)] == ["push"] * 10
    assert b"".join(f.audio for _, f in sink.got if isinstance(f, OutputMulawAudioFrame)) == _expected_audio(frames)


async def test_an_exception_in_a_run_becomes_an_error_frame_not_a_dead_reader():
    """``twilio.input`` hands audio on from its reader task, where no pipecat ``process_frame`` would catch."""

    class Brittle(MulawDecoder):
        def audio(self, frame: Frame) -> Frame:
            raise ValueError("this frame breaks")

    source, brittle = FrameProcessor(), Brittle(side="caller")
    source.link(brittle)
    pushed: list[Frame] = []
    source.add_event_handler("on_before_push_frame", lambda _p, frame: pushed.append(frame))
    await hand_on(source, _caller_frames(1)[0])  # does not raise
    assert [type(f) for f in pushed] == [ErrorFrame] and "this frame breaks" in pushed[0].error
    assert pushed[0].processor is source, "attributed to the stage that handed the audio on"
